#!/usr/bin/env bash
# Retention on PostgreSQL, before and after, side by side: the same log (EVENTS
# order events received in one old month, ENROLLMENTS enrollment events in the
# same month, and a day of recent orders) imported with two builds into fresh
# databases, then `enrollhook prune --older-than 30d` timed, with the WAL it
# wrote, the dead rows it left for VACUUM and the database's size after.
#
# Usage: bench/retention.sh BEFORE_BIN AFTER_BIN
#   EVENTS=200000 (default), ENROLLMENTS=20000, PG=postgres://postgres@127.0.0.1:5432
set -euo pipefail
BEFORE=$(realpath "$1")
AFTER=$(realpath "$2")
EVENTS=${EVENTS:-200000}
ENROLLMENTS=${ENROLLMENTS:-20000}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
WORK=$(mktemp -d /tmp/retention-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# Old events in one month about a hundred days ago (wholly before a 30-day
# cutoff), recent ones yesterday.
python3 - "$EVENTS" "$ENROLLMENTS" "$WORK/log.jsonl" <<'PY'
import datetime as dt, json, sys
events, enrollments, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
today = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
old = (today - dt.timedelta(days=100)).replace(day=10)
recent = today - dt.timedelta(days=1)
def line(received, body):
    return json.dumps({"source": "default", "received_at": received.isoformat().replace("+00:00", "Z"),
                       "body": body}, separators=(",", ":"))
with open(out, "w") as f:
    for i in range(events):
        t = old + dt.timedelta(seconds=i % 86400)
        f.write(line(t, {"id": f"o-{i}", "resource": "order", "action": "created", "tenant_id": "59",
                         "created_at": t.isoformat().replace("+00:00", "Z"),
                         "payload": {"id": i, "user_id": 1000 + i % 5000, "amount_cents": 4900,
                                     "product_name": "Course", "payment_type": "one-time"}}) + "\n")
    for i in range(enrollments):
        t = old + dt.timedelta(seconds=i)
        f.write(line(t, {"id": f"e-{i}", "resource": "enrollment", "action": "created", "tenant_id": "59",
                         "created_at": t.isoformat().replace("+00:00", "Z"),
                         "payload": {"id": i, "user_id": 1000 + i, "course_id": 7, "percentage_completed": "0.0",
                                     "updated_at": t.isoformat().replace("+00:00", "Z")}}) + "\n")
    for i in range(events // 10):
        f.write(line(recent, {"id": f"r-{i}", "resource": "order", "action": "created", "tenant_id": "59",
                              "created_at": recent.isoformat().replace("+00:00", "Z"),
                              "payload": {"id": i, "amount_cents": 4900}}) + "\n")
PY

q() { psql -qtA "$1" -c "$2"; }

declare -A RESULT
for which in before after; do
    bin=$BEFORE; [ "$which" = after ] && bin=$AFTER
    name="retention_bench_$which"
    psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" -c "CREATE DATABASE $name" >&2
    url="$PG/$name"
    nice -n 10 "$bin" --database "$url" import "$WORK/log.jsonl" >&2
    q "$url" "VACUUM ANALYZE" >/dev/null
    lsn0=$(q "$url" "SELECT pg_current_wal_lsn()")
    start=$(date +%s.%N)
    "$bin" --database "$url" prune --older-than 30d >&2
    secs=$(echo "$(date +%s.%N) - $start" | bc -l)
    wal=$(q "$url" "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0')")
    q "$url" "SELECT pg_stat_force_next_flush()" >/dev/null 2>&1 || true
    sleep 1
    dead=$(q "$url" "SELECT COALESCE(SUM(n_dead_tup), 0) FROM pg_stat_user_tables WHERE relname LIKE 'events%'")
    size=$(q "$url" "SELECT pg_database_size(current_database())")
    RESULT[$which]="$secs $wal $dead $size"
    psql -q "$PG/postgres" -c "DROP DATABASE $name WITH (FORCE)" >&2
done

printf '%s old orders + %s old enrollment events + %s recent orders; prune --older-than 30d\n' \
    "$EVENTS" "$ENROLLMENTS" "$((EVENTS / 10))"
printf '%-8s %10s %12s %12s %14s\n' build seconds "WAL MB" "dead rows" "database MB"
for which in before after; do
    read -r secs wal dead size <<<"${RESULT[$which]}"
    printf '%-8s %10.2f %12.1f %12s %14.1f\n' "$which" "$secs" "$(echo "$wal / 1048576" | bc -l)" \
        "$dead" "$(echo "$size / 1048576" | bc -l)"
done
