#!/usr/bin/env bash
# One command to install everything: a virtualenv in .venv with the package, its models and test tools.
# torch is pinned (2.13.0, CPU) in pyproject.toml: an unpinned torch pulls gigabytes of CUDA packages.
# Usage: bash install.sh [--no-browser]   (--no-browser skips Chromium, needed only by the dashboard tests)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
if [ "${1:-}" != "--no-browser" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: no chromium found; the browser tests will be skipped (install Debian's chromium to run them)"
  fi
fi
echo "installed. Next: .venv/bin/routing-engine up"
