#!/usr/bin/env python3
"""Pages one log commit writes on SQLite, by schema version.

Replays the ingest benchmark's deliveries (bench/out/events-v2-*.txt, written by
bench/run.sh) into a fresh database with the repo's SQLite migrations applied up
to each version given, in transactions of BATCH events (as the group commit
does at 64 connections), and counts the WAL frames each commit adds. Page
counts do not depend on the machine or its load, unlike timings. Bodies are
stored as received (the service compresses them since migration 0018, so its
event rows take fewer pages than here); what the script compares is the
indexes and tables a version adds.

Usage: python3 bench/log_pages.py [--batch 22] [--commits 400] [VERSION ...]
(default versions: the last two, i.e. before and after the newest migration)
"""
import argparse
import glob
import json
import os
import sqlite3
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = sorted(glob.glob(str(ROOT / "src/store/sqlite/migrations/0*.sql")))


def pages_per_commit(version, bodies, batch):
    work = tempfile.mkdtemp(prefix="log-pages-")
    db = sqlite3.connect(f"{work}/e.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    for migration in MIGRATIONS[:version]:
        db.executescript(open(migration).read())
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    frame = db.execute("PRAGMA page_size").fetchone()[0] + 24
    wal = Path(f"{work}/e.db-wal")
    commits = 0
    for i in range(0, len(bodies), batch):
        db.execute("BEGIN IMMEDIATE")
        for body in bodies[i:i + batch]:
            e = json.loads(body)
            enrollment = e["payload"].get("id") if e["resource"] == "enrollment" else None
            db.execute(
                "INSERT INTO events (source, event_id, topic, created_at, received_at, enrollment_id, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                ("c64", str(e["id"]), f"{e['resource']}.{e['action']}", e.get("created_at"),
                 "2026-11-27T20:00:00.000000Z", enrollment, body))
        db.execute("COMMIT")
        commits += 1
    frames = (wal.stat().st_size - 32) / frame
    db.close()
    return frames / commits


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=22, help="events per commit")
    p.add_argument("--commits", type=int, default=400)
    p.add_argument("versions", type=int, nargs="*", default=[len(MIGRATIONS) - 1, len(MIGRATIONS)])
    args = p.parse_args()
    events = sorted((ROOT / "bench/out").glob("events-v2-*.txt"))
    if not events:
        raise SystemExit("no bench/out/events-v2-*.txt: run bash bench/run.sh once first")
    with open(events[0]) as f:
        bodies = [line.split(" ", 1)[1] for line, _ in zip(f, range(args.batch * args.commits))]
    for version in args.versions:
        name = Path(MIGRATIONS[version - 1]).name
        print(f"migrations up to {name}: {pages_per_commit(version, bodies, args.batch):.1f} "
              f"pages per commit of {args.batch} events")


if __name__ == "__main__":
    main()
