#!/usr/bin/env python3
"""Writes N distinct, signed enrollment events for bench/pg_events.lua:
one line per event, `signature<TAB>body`. Usage: pg_events.py N SECRET > events.tsv"""
import hashlib, hmac, json, sys

n, secret = int(sys.argv[1]), sys.argv[2].encode()
out = sys.stdout
for i in range(n):
    e = i % 200000
    body = json.dumps({
        "id": f"bench-{i}", "resource": "enrollment", "action": "progress", "tenant_id": "59",
        "created_at": "2024-06-01T10:00:00Z",
        "payload": {"id": e, "course_id": e % 50, "course": {"id": e % 50, "name": "Course"},
                    "user": {"id": e, "email": f"s{e}@example.com"},
                    "percentage_completed": f"{i % 100}.0", "free_trial": False,
                    "updated_at": f"2024-06-01T10:00:00.{i % 1000000:06d}Z"}},
        separators=(",", ":"))
    sig = hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()
    out.write(f"{sig}\t{body}\n")
