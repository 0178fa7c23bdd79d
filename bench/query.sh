#!/usr/bin/env bash
# Query benchmark: Thinkific traffic loaded with `import` into a fresh database,
# then `enrollhook serve` measured with wrk:
#   - GET /api/courses (every course's statistics),
#   - GET /api/enrollments?course_id=<random course>&limit=100 (a filtered page),
#   - GET /api/activity?days=365 (the dashboard's chart),
#   - GET /api/events?topic=enrollment.progress&limit=100 (the log by topic),
#   - GET /api/courses/default/<random course>/funnel (a course's lesson funnel),
#   - GET /api/enrollments?stalled_days=14&course_id=<random course>&limit=50 (stalled students),
#   - GET /api/students/default/<random student> (a student's page).
# Prints a Markdown table and writes it under "## Query benchmark" (SQLite) or
# "## Query benchmark (PostgreSQL)" in BENCHMARKS.md.
#
# TRAFFIC=lessons (default): bench/gen_events.py's deliveries, a third of them
# lesson.completed (students in 50 courses, a third stalled); TRAFFIC=simulate:
# `enrollhook simulate --out` (realistic lifecycles, no lessons: the learning rows
# then measure empty answers).
# DATABASE=postgres://postgres@127.0.0.1/enrollhook_query_bench measures PostgreSQL
# (the database is dropped and created); default: a SQLite file under WORK.
#
# Usage: bench/query.sh            (defaults below; about 3–6 minutes here)
#   EVENTS=1000000 STUDENTS=700000 COURSES=200 DURATION=15s bench/query.sh
# Keep WORK=DIR to reuse the generated file and database between runs (KEEP=1);
# ENROLLHOOK_BIN=path measures a given binary instead of building (A/B).
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${EVENTS:-1000000}
TRAFFIC=${TRAFFIC:-lessons}
STUDENTS=${STUDENTS:-700000}
COURSES=${COURSES:-200}
ARRIVAL_DAYS=${ARRIVAL_DAYS:-1}
DURATION=${DURATION:-15s}
PORT=${PORT:-18089}
WORK=${WORK:-$(mktemp -d /tmp/enrollhook-query-bench.XXXXXX)}
KEEP=${KEEP:-0}
SECRET=query-bench-secret

need() {
    command -v "$1" >/dev/null && return
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing $1 from Debian packages…" >&2
        apt-get install -y "$2" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "$2" >/dev/null; }
    fi
    command -v "$1" >/dev/null || { echo "error: $1 is required: apt-get install $2" >&2; exit 1; }
}
need wrk wrk
need curl curl

# ENROLLHOOK_BIN=path measures that binary instead of building this checkout
# (A/B two builds on one kept database: WORK=… KEEP=1).
if [ -n "${ENROLLHOOK_BIN:-}" ]; then
    BIN=$(realpath "$ENROLLHOOK_BIN")
else
    echo "building release…" >&2
    cargo build --release --quiet
    BIN=$(realpath "${CARGO_TARGET_DIR:-$PWD/target}")/release/enrollhook
fi
mkdir -p "$WORK"
DB=${DATABASE:-sqlite://$WORK/query.db}
case "$DB" in
    postgres*)
        need psql postgresql-client
        BACKEND=PostgreSQL
        PGNAME=${DB##*/}
        if [ ! -s "$WORK/import.txt" ]; then
            psql "${DB%/*}/postgres" -qc "DROP DATABASE IF EXISTS \"$PGNAME\" WITH (FORCE)" \
                -c "CREATE DATABASE \"$PGNAME\"" >&2
        fi
        ;;
    *) BACKEND=SQLite ;;
esac
if [ "$TRAFFIC" = lessons ]; then
    COURSES=50 # gen_events.py's
fi

SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    [ "$KEEP" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT

if [ ! -s "$WORK/traffic.jsonl" ] && [ "$TRAFFIC" = lessons ]; then
    echo "generating $EVENTS events (bench/gen_events.py --jsonl)…" >&2
    python3 bench/gen_events.py --count "$EVENTS" --secret "$SECRET" --jsonl --out "$WORK/traffic.jsonl"
fi
if [ ! -s "$WORK/traffic.jsonl" ]; then
    echo "generating $EVENTS events ($STUDENTS students, $COURSES courses)…" >&2
    "$BIN" simulate --secret "$SECRET" --students "$STUDENTS" --courses "$COURSES" \
        --arrival-days "$ARRIVAL_DAYS" --events "$EVENTS" --seed 42 \
        --out "$WORK/traffic.jsonl" > "$WORK/simulate.txt"
    head -n 1 "$WORK/simulate.txt" >&2
fi
if [ ! -s "$WORK/import.txt" ]; then
    echo "importing…" >&2
    "$BIN" --database "$DB" import "$WORK/traffic.jsonl" | tee "$WORK/import.txt" >&2
fi
IMPORT_LINE=$(head -n 1 "$WORK/import.txt" 2>/dev/null || echo "import: reused an existing database")
# A kept database may come from another build: bring its schema to this one's.
"$BIN" --database "$DB" migrate >&2
ENROLLMENTS=$("$BIN" --database "$DB" courses --format csv \
    | awk -F, 'NR > 1 { n += $4; c += $7 } END { printf "%d enrollments (%d completed)", n, c }')
echo "$ENROLLMENTS" >&2

"$BIN" --database "$DB" --secret "$SECRET" serve --listen "127.0.0.1:$PORT" --no-migrate \
    > "$WORK/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null

# Random course ids (the simulator numbers courses from 1000, gen_events.py from 1)
# and students (gen_events.py: 100000 + enrollment; the simulator: from 1).
if [ "$TRAFFIC" = lessons ]; then
    FIRST_COURSE=1 FIRST_USER=100000 USERS=$(( EVENTS / 4 ))
else
    FIRST_COURSE=1000 FIRST_USER=1 USERS=$STUDENTS
fi
random_path() { # file lua-expression
    cat > "$1" <<EOF
math.randomseed(42)
request = function()
    local course = math.random($FIRST_COURSE, $FIRST_COURSE + $COURSES - 1)
    local user = math.random($FIRST_USER, $FIRST_USER + $USERS - 1)
    return wrk.format("GET", $2)
end
EOF
}
random_path "$WORK/enrollments.lua" '"/api/enrollments?course_id=" .. course .. "&limit=100"'
random_path "$WORK/funnel.lua" '"/api/courses/default/" .. course .. "/funnel"'
random_path "$WORK/stalled.lua" '"/api/enrollments?stalled_days=14&course_id=" .. course .. "&limit=50"'
random_path "$WORK/student.lua" '"/api/students/default/" .. user'
# (A student page of an id no event names is a 404: still an answer, see measure.)

# One wrk run: prints "req/s p50 p99" (latencies in ms).
measure() { # connections path [script]
    local c=$1 path=$2 script=${3:-}
    local args=(-t "$(( c < 2 ? 1 : 2 ))" -c "$c" -d "$DURATION" --latency)
    [ -n "$script" ] && args+=(-s "$script")
    wrk "${args[@]}" "http://127.0.0.1:$PORT$path" > "$WORK/wrk.txt"
    awk '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        $1 == "50.000%" || $1 == "50%" { p50 = ms($2) }
        $1 == "99.000%" || $1 == "99%" { p99 = ms($2) }
        $1 == "Requests/sec:" { rps = $2 }
        END { printf "%.0f %.2f %.2f", rps, p50, p99 }' "$WORK/wrk.txt"
    if grep -q "Non-2xx" "$WORK/wrk.txt" && [ "${script##*/}" != student.lua ]; then
        echo "error: non-2xx answers during the run:" >&2; cat "$WORK/wrk.txt" >&2; exit 1
    fi
}

TABLE="| endpoint | connections | requests/s | p50 ms | p99 ms |
|---|---:|---:|---:|---:|"
for c in 1 8; do
    read -r rps p50 p99 <<<"$(measure "$c" /api/courses)"
    TABLE+="
| \`/api/courses\` ($COURSES courses) | $c | $rps | $p50 | $p99 |"
    read -r rps p50 p99 <<<"$(measure "$c" / "$WORK/enrollments.lua")"
    TABLE+="
| \`/api/enrollments?course_id=…&limit=100\` | $c | $rps | $p50 | $p99 |"
    read -r rps p50 p99 <<<"$(measure "$c" "/api/activity?days=365")"
    TABLE+="
| \`/api/activity?days=365\` (the dashboard's chart) | $c | $rps | $p50 | $p99 |"
    read -r rps p50 p99 <<<"$(measure "$c" "/api/events?topic=enrollment.progress&limit=100")"
    TABLE+="
| \`/api/events?topic=enrollment.progress&limit=100\` | $c | $rps | $p50 | $p99 |"
    read -r rps p50 p99 <<<"$(measure "$c" / "$WORK/funnel.lua")"
    TABLE+="
| \`/api/courses/default/…/funnel\` (a course's lesson funnel) | $c | $rps | $p50 | $p99 |"
    read -r rps p50 p99 <<<"$(measure "$c" / "$WORK/stalled.lua")"
    TABLE+="
| \`/api/enrollments?stalled_days=14&course_id=…&limit=50\` | $c | $rps | $p50 | $p99 |"
    read -r rps p50 p99 <<<"$(measure "$c" / "$WORK/student.lua")"
    TABLE+="
| \`/api/students/default/…\` (a student's page) | $c | $rps | $p50 | $p99 |"
done

if [ "$TRAFFIC" = lessons ]; then
    DATA="\`bench/gen_events.py --count $EVENTS --jsonl\` (50 courses, a third of the events lesson.completed, a third of the students stalled)"
else
    DATA="\`enrollhook simulate --students $STUDENTS --courses $COURSES --arrival-days $ARRIVAL_DAYS --events $EVENTS --seed 42 --out\`
(realistic lifecycles cut off after $EVENTS events, so most students are early in their courses)"
fi
TITLE="## Query benchmark"
[ "$BACKEND" = PostgreSQL ] && TITLE="## Query benchmark (PostgreSQL)"
SECTION="$TITLE

\`bench/query.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores, release build, $BACKEND.
Data: $DATA,
then \`enrollhook import\`: $IMPORT_LINE
Projection: $ENROLLMENTS.
Load: wrk for $DURATION per row; enrollment pages pick a random course per request.
Targets: \`/api/courses\` p99 under 50 ms; funnel, stalled page and student page p99
under 20 ms at 1 connection and 50 ms at 8.

$TABLE
"
echo
echo "$SECTION"

# Replace our section of BENCHMARKS.md (other sections belong to other benchmarks).
touch BENCHMARKS.md
python3 - "$SECTION" "$TITLE" <<'PY'
import re, sys
section = sys.argv[1].rstrip() + "\n"
title = sys.argv[2]
text = open("BENCHMARKS.md").read()
if not text.strip():
    text = "# Benchmarks\n\n"
pattern = re.compile("^" + re.escape(title) + r"\n.*?(?=^## |\Z)", re.S | re.M)
if pattern.search(text):
    text = pattern.sub(lambda m: section + "\n", text).rstrip() + "\n"
else:
    text = text.rstrip() + "\n\n" + section
open("BENCHMARKS.md", "w").write(text)
PY
echo "wrote the $TITLE section of BENCHMARKS.md" >&2
