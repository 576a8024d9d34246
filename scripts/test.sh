#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up (Python env, Chromium, local SLURM cluster), notebook tests, pytest.
#   bash scripts/test.sh            everything (notebooks + unit + slow + SLURM + browser tests)
#   bash scripts/test.sh -m "not slow"   extra arguments go to pytest
#   bash scripts/test.sh --heavy    the opt-in tests, none of which the line above runs (CI's scheduled heavy target,
#                                   `.ci/run --heavy`; hours on 2 cores, the soak alone about one): the `#| slow` notebook cells (41_rl's
#                                   GRPO demo), the SFT and GRPO parts of `bench/gpu.sh --dry-run`, the fault soak (>= 50
#                                   faults, SLURM faults included: `-m soak`), the full demo (`-m full_demo`) and the
#                                   tests marked `heavy` (`-m heavy`: the executed full docs site, 800 pretraining steps)
set -euo pipefail
cd "$(dirname "$0")/.."
heavy=0
if [ "${1:-}" = "--heavy" ]; then heavy=1; shift; fi
bash scripts/setup.sh --system
export PATH="$PWD/.venv/bin:$PATH"
if [ $heavy -eq 1 ]; then
  # each part runs even when one before it failed; the exit status is the first failure's
  rc=0
  step() { echo "[test --heavy] $*"; set +e; "$@"; local r=$?; set -e
           if [ $r -eq 5 ]; then echo "[test --heavy] collected no tests: that is a failure here" >&2; r=1; fi
           if [ $r -ne 0 ] && [ $rc -eq 0 ]; then rc=$r; fi; }
  step nbdev-test --flags slow --cell-timeout 3600 nbs/41_rl.ipynb          # minutes of GRPO: over the 600 s cell limit under load
  step env FORGE_TEST_GPU_DRY_ALL=1 GPU_BENCH_SCALE=12 pytest tests/test_bench.py -ra -k test_gpu_sh_dry_run_sft_and_grpo_parts "$@"
  step pytest tests/test_faults.py -ra -m soak --durations=15 "$@"
  step pytest tests/test_demo.py -ra -m full_demo "$@"
  step pytest tests -ra -m heavy --durations=15 "$@"
  exit $rc
fi
echo "[test] notebook tests (nbdev-test)"
nbdev-test --n-workers 2
echo "[test] pytest"
set +e
pytest tests -ra --durations=15 "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "[test] pytest collected no tests: that is a failure here" >&2; exit 1; fi
exit $rc
