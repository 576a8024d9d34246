#!/usr/bin/env bash
# Idempotent set-up on a fresh machine. Always: the Python environment in .venv (CPU torch unless told otherwise).
#   --system   also Debian packages for the tests (Chromium) and the local SLURM cluster (slurm/dev-cluster up); needs root.
# GPU users: FORGE_TORCH="torch==2.13.0 --index-url <your CUDA wheel index>" bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
stamp=.venv/.forge-setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "[setup] Python environment in .venv"
  .venv/bin/pip install -q --upgrade pip
  # The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/pip install -q ${FORGE_TORCH:-torch==2.13.0}
  .venv/bin/pip install -q -e ".[dev]"
  rm -f .venv/.forge-setup-*; touch "$stamp"
fi
if [ "${1:-}" = "--system" ]; then
  if [ "$(id -u)" != 0 ]; then echo "[setup] --system needs root (apt-get, SLURM daemons)" >&2; exit 1; fi
  # The browser tests drive /usr/bin/chromium from Debian's `chromium` package (tests/conftest.py: CHROMIUM), so that
  # package is what is checked and installed, whatever other `chromium` may be on PATH.
  if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "ok installed" || [ ! -x /usr/bin/chromium ]; then
    echo "[setup] Debian Chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  [ -x /usr/bin/chromium ] || { echo "[setup] /usr/bin/chromium still missing after apt-get install chromium" >&2; exit 1; }
  slurm/dev-cluster up
fi
