#!/usr/bin/env bash
# Bytes per stored event, before and after, side by side: the same generated
# traffic (bench/gen_events.py --jsonl, EVENTS events) imported with two
# builds into fresh SQLite files and fresh PostgreSQL databases, then measured:
#   SQLite:     dbstat per table and index (log file and projection file)
#   PostgreSQL: pg_total_relation_size of `events`, its partitions and
#               `event_ids` (log + indexes + TOAST)
#               and of every other table (projection, outbox, …)
#
# Usage: bench/bytes.sh BEFORE_BIN AFTER_BIN
#   EVENTS=200000 (default), PG=postgres://postgres@127.0.0.1:5432
# e.g. build main into one target dir and this branch into another:
#   (cd ../main && CARGO_TARGET_DIR=/tmp/before cargo build --release)
#   CARGO_TARGET_DIR=target-rel cargo build --release
#   bench/bytes.sh /tmp/before/release/enrollhook target-rel/release/enrollhook
set -euo pipefail
BEFORE=$(realpath "$1")
AFTER=$(realpath "$2")
EVENTS=${EVENTS:-200000}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
WORK=$(mktemp -d /tmp/bytes-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$(dirname "$0")/.."

python3 bench/gen_events.py --count "$EVENTS" --secret bytes-bench --jsonl \
    --out "$WORK/traffic.jsonl" >&2

sqlite_bytes() { # DB: prints "log other"
    python3 - "$1" <<'PY'
import sqlite3, sys
db = sys.argv[1]
def size(path, where):
    c = sqlite3.connect(path)
    return c.execute(f"SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE {where}").fetchone()[0]
log = size(db, "name = 'events' OR name IN (SELECT name FROM sqlite_master WHERE tbl_name = 'events')")
rest = size(db, "NOT (name = 'events' OR name IN (SELECT name FROM sqlite_master WHERE tbl_name = 'events'))")
rest += size(db + "-projection", "1")
print(log, rest)
PY
}

pg_bytes() { # URL: prints "log other"
    psql -qtA "$1" -c "VACUUM" >/dev/null
    # The log is `events` with its partitions (migration 23) and `event_ids`.
    psql -qtA "$1" -F ' ' -c "WITH log AS (
            SELECT 'events'::regclass AS relid
            UNION SELECT relid FROM pg_partition_tree('events')
            UNION SELECT to_regclass('event_ids') WHERE to_regclass('event_ids') IS NOT NULL)
        SELECT (SELECT SUM(pg_total_relation_size(relid)) FROM log),
        (SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'm')
           AND c.oid NOT IN (SELECT relid FROM log))"
}

declare -A RESULT
for which in before after; do
    bin=$BEFORE; [ "$which" = after ] && bin=$AFTER
    db="sqlite://$WORK/$which.db"
    nice -n 19 "$bin" --database "$db" import "$WORK/traffic.jsonl" >&2
    RESULT[sqlite-$which]=$(sqlite_bytes "$WORK/$which.db")
    name="bytes_bench_$which"
    psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" -c "CREATE DATABASE $name" >&2
    nice -n 19 "$bin" --database "$PG/$name" import "$WORK/traffic.jsonl" >&2
    RESULT[postgres-$which]=$(pg_bytes "$PG/$name")
    psql -q "$PG/postgres" -c "DROP DATABASE $name WITH (FORCE)" >&2
done

printf '%s events (bench/gen_events.py --jsonl), bytes per stored event\n' "$EVENTS"
printf '%-11s %-8s %10s %10s %10s\n' backend build log other total
for backend in sqlite postgres; do
    for which in before after; do
        read -r log rest <<<"${RESULT[$backend-$which]}"
        printf '%-11s %-8s %10.1f %10.1f %10.1f\n' "$backend" "$which" \
            "$(echo "$log / $EVENTS" | bc -l)" "$(echo "$rest / $EVENTS" | bc -l)" \
            "$(echo "($log + $rest) / $EVENTS" | bc -l)"
    done
done
