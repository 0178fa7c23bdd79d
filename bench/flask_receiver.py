"""A typical hand-written Thinkific webhook receiver, for comparison.

What a developer would write in an afternoon: Flask, verify the HMAC, insert
the event into SQLite (WAL, synchronous=FULL, one commit per request), ignore
duplicates. Run under gunicorn with a few sync workers:

    BENCH_SECRET=... BENCH_DB=/tmp/flask.db gunicorn -w 5 flask_receiver:app
"""

import hashlib
import hmac
import json
import os
import sqlite3
from datetime import datetime, timezone

from flask import Flask, abort, g, jsonify, request

SECRET = os.environ["BENCH_SECRET"].encode()
DB = os.environ.get("BENCH_DB", "flask_receiver.db")

app = Flask(__name__)

with sqlite3.connect(DB) as setup:
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute(
        "CREATE TABLE IF NOT EXISTS events (source TEXT, event_id TEXT, topic TEXT,"
        " received_at TEXT, body TEXT, PRIMARY KEY (source, event_id))"
    )


def db():
    if "db" not in g:
        conn = sqlite3.connect(DB, timeout=10)
        conn.execute("PRAGMA synchronous=FULL")
        g.db = conn
    return g.db


@app.teardown_appcontext
def close_db(_exc):
    conn = g.pop("db", None)
    if conn is not None:
        conn.close()


@app.post("/webhooks/thinkific/<source>")
def receive(source):
    body = request.get_data()
    given = request.headers.get("X-Thinkific-Hmac-Sha256", "")
    expected = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(given.lower(), expected):
        abort(401)
    event = json.loads(body)
    topic = f"{event['resource']}.{event['action']}"
    conn = db()
    with conn:  # commits
        conn.execute(
            "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)",
            (source, str(event["id"]), topic, datetime.now(timezone.utc).isoformat(), body.decode()),
        )
    return jsonify(status="stored", event_id=event["id"])
