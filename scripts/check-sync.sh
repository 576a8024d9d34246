#!/usr/bin/env bash
# Fail when notebooks, package and README are out of step (CI runs this before the tests). Needs a git work tree.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
fail() { echo "OUT OF STEP: $*" >&2; exit 1; }
[ -z "$(git status --porcelain)" ] || { git status --porcelain; fail "commit or discard local changes before the sync check"; }

echo "[sync] nbdev-clean: notebooks must be committed clean (no execution counts or metadata)"
nbdev-clean
if [ -n "$(git status --porcelain nbs)" ]; then git status --porcelain nbs; fail "nbdev-clean changed notebooks: run nbdev-clean and commit"; fi

echo "[sync] nbdev-export: forge_nb/ must be exactly what the notebooks export"
nbdev-export
if [ -n "$(git status --porcelain forge_nb)" ]; then
  git status --porcelain forge_nb; git --no-pager diff forge_nb | head -40
  fail "Notebooks and library are not in sync: forge_nb/ is generated from nbs/. Edit the notebook, run nbdev-export, and commit both (never edit forge_nb/*.py by hand)"
fi
python -m forge_nb.docs check-sync || fail "forge_nb/ has modules that no notebook exports (see above): write them in nbs/ and run nbdev-export"

echo "[sync] outputs only in cells marked #| keep_output (cheap, deterministic examples)"
python -m forge_nb.docs check-outputs || fail "a notebook has outputs outside #| keep_output cells: run 'forge-nb docs outputs' (it clears them, and refreshes the kept ones)"

echo "[sync] README.md must be generated from nbs/index.ipynb"
python -m forge_nb.docs check-readme || fail "README.md is out of step with nbs/index.ipynb: run 'forge-nb docs readme' and commit"
echo "[sync] ok"
