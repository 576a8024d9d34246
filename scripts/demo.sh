#!/usr/bin/env bash
# The main job on a fresh machine: set-up, then the whole pipeline on this machine, on text every machine has
# (Python's standard library and documentation, the system's licence texts): data mixing → tokenizer → token store
# → pretraining from scratch → SFT on examples built from those documents → GRPO to a three-rule policy → runs/demo/report.html
# (its path printed last). Finished stages are reused when run again. Extra arguments go to `forge-nb demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/forge-nb demo "$@"
