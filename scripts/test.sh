#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up (Python env, Chromium, local SLURM cluster), notebook tests, pytest.
#   bash scripts/test.sh            everything (notebooks + unit + slow + SLURM + browser tests)
#   bash scripts/test.sh -m "not slow"   extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --system
export PATH="$PWD/.venv/bin:$PATH"
echo "[test] notebook tests (nbdev-test)"
nbdev-test --n-workers 2
echo "[test] pytest"
set +e
pytest tests -ra --durations=15 "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "[test] pytest collected no tests: that is a failure here" >&2; exit 1; fi
exit $rc
