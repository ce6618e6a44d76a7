#!/usr/bin/env bash
# Feast in its own venv (bench/.feast-venv, pins in bench/feast-requirements.txt), never in skewless's: used by
# the side-by-side benchmark (bench/run.sh), `skewless import-feast` and the Feast-client tests. Creates or
# updates the venv when the pins changed (a stamp file remembers them); prints nothing when it is up to date.
#   bash bench/feast-venv.sh        # then: bench/.feast-venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."

feast_venv=bench/.feast-venv
stamp="$feast_venv/.installed"
want="$(sha256sum bench/feast-requirements.txt | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "== installing Feast into $feast_venv (once; a few minutes)" >&2
  [ -x "$feast_venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$feast_venv"
  "$feast_venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$feast_venv/bin/python" -m pip install --quiet -r bench/feast-requirements.txt >&2
  echo "$want" > "$stamp"
fi
