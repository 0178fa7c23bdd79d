#!/usr/bin/env python3
"""Writes distinct pre-signed Thinkific deliveries for the ingest benchmark.

One line per delivery: `<hex HMAC-SHA256 of the body> <body>`, the body a compact
JSON envelope as Thinkific sends it. Every enrollment gets three events (created
at 0 %, progress at 50 %, completed at 100 %), so the projection does inserts,
updates and completions. As in real life, the events of one enrollment are far
apart: enrollments come in blocks of BLOCK, all created, then all progressed,
then all completed."""

import argparse
import hashlib
import hmac
import json
import sys

ACTIONS = (("created", "0.0"), ("progress", "50.0"), ("completed", "100.0"))
BLOCK = 1000


def event(n: int) -> bytes:
    block, rest = divmod(n, 3 * BLOCK)
    step, offset = divmod(rest, BLOCK)
    enrollment = block * BLOCK + offset
    action, pct = ACTIONS[step]
    course = 1 + enrollment % 50
    user = 100000 + enrollment
    minute, second = divmod(step * 7 + enrollment % 7, 60)
    updated = f"2024-03-{1 + enrollment % 28:02d}T10:{minute:02d}:{second:02d}.000Z"
    body = {
        "id": f"2024030110{n:013d}",
        "resource": "enrollment",
        "action": action,
        "tenant_id": "59",
        "created_at": updated,
        "payload": {
            "id": 5000000 + enrollment,
            "course_id": course,
            "course": {"id": course, "name": f"Course {course}"},
            "user": {
                "id": user,
                "email": f"student{user}@example.com",
                "first_name": "Student",
                "last_name": f"No{user}",
            },
            "percentage_completed": pct,
            "free_trial": False,
            "activated_at": "2024-03-01T09:00:00.000Z",
            "started_at": "2024-03-01T09:00:00.000Z",
            "completed_at": updated if action == "completed" else None,
            "expiry_date": None,
            "created_at": "2024-03-01T09:00:00.000Z",
            "updated_at": updated,
        },
    }
    return json.dumps(body, separators=(",", ":")).encode()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--count", type=int, required=True, help="number of deliveries")
    p.add_argument("--secret", required=True, help="the school's API key that signs them")
    p.add_argument("--out", required=True, help="file to write")
    args = p.parse_args()
    key = args.secret.encode()
    with open(args.out, "wb") as f:
        for n in range(args.count):
            body = event(n)
            sig = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
            f.write(sig + b" " + body + b"\n")
    print(f"wrote {args.count} signed deliveries to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
