#!/usr/bin/env python3
"""Where enrollhook's CPU goes per event, on SQLite or PostgreSQL (issue #21).

Starts the release `enrollhook serve` on a fresh database, warms it up, then
drives it with wrk at 64 connections (the ingest benchmark's deliveries, a third
of them lesson.completed) and reads, around that run:

- each thread's CPU time (utime + stime of /proc/PID/task/TID/stat), grouped by
  thread name: the request threads (`tokio-rt-worker`: HTTP, verification,
  parsing, answering), SQLite's log writer (`sqlite-batch`), its projector
  (`sqlite-project`), the log file writer (`tracing-appender`), …;
- with `perf` installed (Debian's linux-perf), a profile of the request threads
  whose samples are put in categories by symbol (HMAC/SHA-256, JSON, zstd,
  allocator, kernel: syscalls and TCP, the rest), for the split inside them;
- on PostgreSQL, the CPU time of the database's own backends (their
  /proc/PID/stat, processes named `postgres`), which serve enrollhook's batches,
  and the WAL it wrote per event (`pg_current_wal_lsn` before and after).

Prints CPU seconds per 10,000 answered events by part, as a Markdown table.

Usage: python3 bench/cpu_breakdown.py [--database postgres://…] [--duration 15]
       (build first: cargo build --release; CARGO_TARGET_DIR is honoured)
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the ingest benchmark's helpers and event file)

CATEGORIES = [
    ("HMAC-SHA256 verification", re.compile(r"sha2|sha256|hmac|Sha256", re.I)),
    ("JSON parsing and writing", re.compile(r"serde_json|serde_core|simd_json")),
    ("zstd compression of the body", re.compile(r"ZSTD|zstd|HIST_|FSE_|HUF_")),
    ("allocator (malloc/free)", re.compile(r"malloc|free|realloc|unlink_chunk|cfree")),
    ("copying memory (memmove, memcmp)", re.compile(r"memmove|memcpy|memset|memcmp")),
    ("tracing (spans, the log line, metrics)", re.compile(r"tracing|sharded_slab|metrics")),
    ("HTTP (hyper, httparse, axum, tower)", re.compile(r"hyper|httparse|http::|axum|tower")),
    ("tokio's scheduler and I/O", re.compile(r"tokio::|mio::")),
    ("kernel (syscalls, TCP, scheduling)", re.compile(r"^\[k\]")),
]


def thread_cpu(pid):
    """CPU seconds per thread name for the process `pid`."""
    out = defaultdict(float)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[name] += (int(fields[11]) + int(fields[12])) / bench.CLK_TCK
    return out


def postgres_cpu():
    """CPU seconds of every process named postgres (the server and its backends)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat[stat.index("(") + 1:stat.rindex(")")] != "postgres":
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / bench.CLK_TCK
    return total


def wal_lsn():
    return bench.psql("postgres", "SELECT pg_current_wal_lsn()").stdout.strip()


def categorize(report):
    """Shares of perf samples per category, from `perf report --sort symbol`."""
    shares = defaultdict(float)
    for line in report.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\[[.k]\])\s+(.*)", line)
        if not m:
            continue
        share, kind, symbol = float(m.group(1)), m.group(2), m.group(3)
        label = f"{kind} {symbol}"
        for name, pattern in CATEGORIES:
            if pattern.search(symbol if name != CATEGORIES[-1][0] else label):
                shares[name] += share
                break
        else:
            shares["the rest (the handler, the queue, std)"] += share
    return shares


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database", default=None, help="postgres://… (default: a fresh SQLite file)")
    p.add_argument("--duration", type=int, default=15)
    p.add_argument("--events", type=int, default=600_000)
    args = p.parse_args()

    events_file = bench.BENCH / "out" / f"events-v2-{args.events}.txt"
    if not events_file.exists():
        sys.exit(f"{events_file} is missing: run bench/bench.py once (it writes it)")
    work = Path(tempfile.mkdtemp(prefix="enrollhook-cpu-"))
    sources = "".join(f'[[source]]\nname = "{s}"\nsecret = "{bench.SECRET}"\n\n' for s in bench.SOURCES)
    (work / "enrollhook.toml").write_text(sources)
    if args.database:
        name = args.database.rsplit("/", 1)[1]
        bench.create_pg_database(name)
        url = args.database
    else:
        url = f"sqlite://{work / 'enrollhook.db'}"
    port = bench.free_port()
    log_path = work / "serve.log"
    proc = subprocess.Popen(
        [str(bench.ENROLLHOOK), "--config", str(work / "enrollhook.toml"), "--database", url,
         "serve", "--listen", f"127.0.0.1:{port}"],
        stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    try:
        bench.wait_ready(proc, port, log_path)
        bench.run_wrk(port, 64, 3, "warmup", events_file)
        before, pg_before = thread_cpu(proc.pid), postgres_cpu()
        wal_before = wal_lsn() if args.database else None
        perf = None
        if shutil.which("perf"):
            tids = [t.name for t in Path(f"/proc/{proc.pid}/task").iterdir()
                    if "tokio-rt-worker" in (t / "comm").read_text()]
            perf = subprocess.Popen(
                ["perf", "record", "-F", "499", "-o", str(work / "perf.data"), "-t", ",".join(tids),
                 "--", "sleep", str(args.duration)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run = bench.run_wrk(port, 64, args.duration, "c64", events_file)
        time.sleep(1)  # the projector catches up with what was answered
        after, pg_after = thread_cpu(proc.pid), postgres_cpu()
        wal_after = wal_lsn() if args.database else None
        if perf:
            perf.wait()
    finally:
        bench.stop(proc)

    per10k = 10_000 / max(run["ok"], 1)
    parts = {name: (after[name] - before.get(name, 0.0)) * per10k for name in after}
    total = sum(parts.values())
    print(f"{run['ok']:,} events answered in {args.duration} s at 64 connections "
          f"({run['ok'] / args.duration:,.0f}/s); {'PostgreSQL' if args.database else 'SQLite'}\n")
    print("| part | CPU s / 10k events | share |")
    print("|---|---:|---:|")
    shares = {}
    if perf:
        report = subprocess.run(
            ["perf", "report", "-i", str(work / "perf.data"), "--no-children", "--sort", "symbol",
             "--stdio"], capture_output=True, text=True).stdout
        shares = categorize(report)
    for name, cpu in sorted(parts.items(), key=lambda kv: -kv[1]):
        if cpu < 0.005:
            continue
        print(f"| thread `{name}` | {cpu:.3f} | {100 * cpu / total:.0f} % |")
        if name == "tokio-rt-worker" and shares:
            for category, share in sorted(shares.items(), key=lambda kv: -kv[1]):
                print(f"| &nbsp;&nbsp;of which {category} | {cpu * share / 100:.3f} | {share:.0f} % of the thread |")
    print(f"| **enrollhook, all threads** | **{total:.3f}** | 100 % |")
    if args.database:
        print(f"| PostgreSQL's own processes | {(pg_after - pg_before) * per10k:.3f} | (beside) |")
        wal = bench.psql("postgres", f"SELECT pg_wal_lsn_diff('{wal_after}', '{wal_before}')").stdout
        print(f"\nWAL written: {float(wal) / max(run['ok'], 1):,.0f} bytes per event")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
