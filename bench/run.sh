#!/usr/bin/env bash
# skewless vs Feast, side by side, in one command (issue 4). Arguments go to bench/run.py:
#   bash bench/run.sh                                  # scale 1.0 (100k users, 2M feature rows), 3 repetitions
#   bash bench/run.sh --scale 0.05 --repeats 2         # a quick look
# Feast lives in its own venv (bench/.feast-venv, pins in bench/feast-requirements.txt), never in skewless's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test   # skewless, with psycopg for the PostgreSQL source

bash bench/feast-venv.sh
if ! command -v wrk >/dev/null 2>&1; then
  echo "== wrk not found: the HTTP load uses bench/http_load.py (install Debian's wrk for lower client overhead)"
fi
exec .venv/bin/python -m bench.run "$@"
