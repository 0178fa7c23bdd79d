#!/usr/bin/env bash
# PostgreSQL throughput: one and two `enrollhook serve` instances on one fresh
# database, beside bare axum and enrollhook on SQLite in the same run; wrk posting distinct pre-signed events at 8 and 64 connections, then
# the stored count checked in the database (so every counted request was a
# durable insert). Needs a release build, wrk, python3, psql.
# Usage: bench/pg.sh [DURATION=10s]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10s}
PG=${ENROLLHOOK_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}
BIN=${CARGO_TARGET_DIR:-target}/release/enrollhook
BASELINE=${CARGO_TARGET_DIR:-target}/release/examples/bench_baseline
SECRET=bench-secret
EVENTS=/tmp/enrollhook-bench-events
[ -f $EVENTS.a ] || { python3 bench/pg_events.py 600000 $SECRET > $EVENTS.all;
  awk 'NR%2==0' $EVENTS.all > $EVENTS.a; awk 'NR%2==1' $EVENTS.all > $EVENTS.b; rm $EVENTS.all; }

run() { # kind (bare|sqlite|postgres) instances connections
  local kind=$1 n=$2 c=$3 db=enrollhook_bench pids=() url="" work
  work=$(mktemp -d)
  case $kind in
    postgres)
      psql "$PG" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
      url="${PG%/*}/$db"
      $BIN --database "$url" migrate >/dev/null ;;
    sqlite)
      url="sqlite://$work/bench.db"
      $BIN --database "$url" migrate >/dev/null ;;
  esac
  for i in $(seq 1 "$n"); do
    if [ "$kind" = bare ]; then
      $BASELINE --mode bare --listen 127.0.0.1:$((18180 + i)) --secret $SECRET \
        --database "$work/unused.db" >/dev/null 2>&1 &
    else
      RUST_LOG=warn $BIN --database "$url" --secret $SECRET serve --listen 127.0.0.1:$((18180 + i)) &
    fi
    pids+=($!)
  done
  sleep 1
  local per=$((c / n)) files=($EVENTS.a $EVENTS.b) outs=() wrks=()
  for i in $(seq 1 "$n"); do
    local out; out=$(mktemp)
    outs+=("$out")
    EVENTS=${files[$((i-1))]} WRK_THREADS=2 wrk -t2 -c$per -d"$DUR" --latency -s bench/pg_events.lua \
      http://127.0.0.1:$((18180 + i)) > "$out" &
    wrks+=($!)
  done
  wait "${wrks[@]}"
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
  local stored=-
  case $kind in
    postgres) stored=$(psql "${url}" -Atc "SELECT count(*) FROM events") ;;
    sqlite) stored=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM events').fetchone()[0])" "$work/bench.db") ;;
  esac
  local reqs=0 rps=0
  for out in "${outs[@]}"; do
    reqs=$((reqs + $(awk '/requests in/ {print $1}' "$out")))
    rps=$(awk -v a="$rps" '/Requests\/sec/ {print a + $2}' "$out")
    echo "  instance: $(grep -E '^ +99%' "$out" | xargs) p50 $(grep -E '^ +50%' "$out" | awk '{print $2}'); non-2xx: $(grep -c Non-2xx "$out" || true)"
  done
  echo "$kind, $n instance(s), $c connections: $rps req/s, $reqs requests, $stored events stored"
  rm -rf "${outs[@]}" "$work"
}
# The baselines first, in the same run: bare axum (reads the body) and SQLite.
run bare 1 8; run bare 1 64; run sqlite 1 8; run sqlite 1 64
run postgres 1 8; run postgres 1 64; run postgres 2 8; run postgres 2 64
psql "$PG" -qc "DROP DATABASE IF EXISTS enrollhook_bench WITH (FORCE)"
