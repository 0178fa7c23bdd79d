#!/usr/bin/env python3
"""Writes distinct pre-signed Thinkific deliveries for the ingest benchmark.

One line per delivery: `<hex HMAC-SHA256 of the body> <body>`, the body a compact
JSON envelope as Thinkific sends it. Every enrollment gets four events (created
at 0 %, progress at 50 %, the `lesson.completed` that made that progress, as
Thinkific sends one per progress event, and completed at 100 %), so the
projection does inserts, updates, lessons and completions; a third of the
students stall instead of completing (one more lesson, no completion), so a
third of the events are lessons; `--no-lessons` leaves
the lessons out (the traffic of earlier measurements: three events each). As in
real life, the events of one enrollment are far apart: enrollments come in blocks
of BLOCK, all created, then all progressed, and so on.

`--jsonl` writes `enrollhook import` lines instead (for bench/query.sh):
`{"source":"default","headers":{"x-thinkific-hmac-sha256":…},"body":"…"}`."""

import argparse
import hashlib
import hmac
import json
import sys

ACTIONS = (("created", "0.0"), ("progress", "50.0"), ("completed", "100.0"))
WITH_LESSONS = (("created", "0.0"), ("progress", "50.0"), ("lesson", None), ("completed", "100.0"))
BLOCK = 1000
LESSONS_PER_COURSE = 12


def event(n: int, actions=WITH_LESSONS) -> bytes:
    block, rest = divmod(n, len(actions) * BLOCK)
    step, offset = divmod(rest, BLOCK)
    enrollment = block * BLOCK + offset
    action, pct = actions[step]
    course = 1 + enrollment % 50
    user = 100000 + enrollment
    minute, second = divmod(step * 7 + enrollment % 7, 60)
    updated = f"2024-03-{1 + enrollment % 28:02d}T10:{minute:02d}:{second:02d}.000Z"
    if action == "completed" and actions is WITH_LESSONS and enrollment % 3 == 0:
        # A third of the students stall instead: one more lesson, no completion
        # (so a third of the events are lessons, and stalled lists have rows).
        action = "lesson"
    if action == "lesson":
        # The lesson that made the progress: as Thinkific publishes lesson.completed.
        lesson = (enrollment + step) % LESSONS_PER_COURSE
        body = {
            "id": f"2024030110{n:013d}",
            "resource": "lesson",
            "action": "completed",
            "tenant_id": "59",
            "created_at": updated,
            "payload": {
                "chapter": {"id": course * 100 + lesson // 4, "name": f"Chapter {lesson // 4 + 1}"},
                "course": {"id": course, "name": f"Course {course}"},
                "enrollment": {"id": 5000000 + enrollment},
                "lesson": {"id": course * 1000 + lesson, "name": f"Lesson {lesson + 1}",
                           "position": lesson % 4, "type": "Video"},
                "user": {
                    "email": f"student{user}@example.com",
                    "first_name": "Student",
                    "id": user,
                    "last_name": f"No{user}",
                },
            },
        }
        return json.dumps(body, separators=(",", ":")).encode()
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
    p.add_argument("--no-lessons", action="store_true",
                   help="enrollment events only (created, progress, completed)")
    p.add_argument("--jsonl", action="store_true", help="write `enrollhook import` lines")
    args = p.parse_args()
    key = args.secret.encode()
    actions = ACTIONS if args.no_lessons else WITH_LESSONS
    with open(args.out, "wb") as f:
        for n in range(args.count):
            body = event(n, actions)
            sig = hmac.new(key, body, hashlib.sha256).hexdigest()
            if args.jsonl:
                line = {"source": "default", "headers": {"x-thinkific-hmac-sha256": sig},
                        "body": body.decode()}
                f.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
            else:
                f.write(sig.encode() + b" " + body + b"\n")
    print(f"wrote {args.count} signed deliveries to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
