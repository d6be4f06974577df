#!/usr/bin/env bash
# Installs what the tests need (Debian packages, a virtualenv) and runs them. Extra arguments go
# to pytest. Used by CI (.ci/run) and by developers alike.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -s tests/apt-packages.txt ] && command -v apt-get >/dev/null; then
  missing=()
  while read -r pkg; do
    [ -z "$pkg" ] || [[ "$pkg" == \#* ]] || dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done < tests/apt-packages.txt
  if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -r requirements-test.txt
# Two pytest-xdist workers, each running whole files (module fixtures start their servers and
# engines once): most tests wait on a server process, a browser or a pool, so two of them share
# 2 cores well (16.8 min instead of 22.7 for pytest on a 2-core machine). TEST_WORKERS=0: one process.
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
