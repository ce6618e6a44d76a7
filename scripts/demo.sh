#!/usr/bin/env bash
# The whole path on embedded defaults: example data in SQLite, Spark local, Delta Lake under .skewless/,
# an embedded Redis-protocol server, the HTTP service. Nothing to install by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/skewless demo "$@"
