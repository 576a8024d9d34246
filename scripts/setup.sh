#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: the Python environment in .venv (CPU torch unless told otherwise).
# GPU users: FORGE_TORCH="torch" (or a CUDA wheel spec, e.g. "torch==2.13.0 --index-url <your CUDA index>") bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
stamp=.venv/.forge-setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  # The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/pip install -q ${FORGE_TORCH:-torch==2.13.0}
  .venv/bin/pip install -q -e ".[dev]"
  rm -f .venv/.forge-setup-*; touch "$stamp"
fi
