#!/usr/bin/env bash
# The ingest benchmark in one command: bash bench/run.sh [--duration S] [--only a,b] ...
# Installs wrk, Flask and gunicorn when missing, builds in release mode, then
# bench/bench.py measures every contender and rewrites the table in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
    apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }
fi
if ! python3 -c 'import flask, gunicorn' 2>/dev/null; then
    python3 -m pip install --quiet flask gunicorn
fi

cargo build --release --bin enrollhook --example bench_baseline --example broker_place
exec python3 bench/bench.py "$@"
