#!/usr/bin/env bash
# What only a GPU can measure, in one prepared run (<= 8 minutes on one H200), then one table:
#   1. MFU of pretraining a 0.73B-parameter Llama (depth 24) in bf16, eager       (limit 100 s)
#   2. the same with torch.compile (each decoder layer, inductor)                 (limit 150 s)
#   3. FSDP2 across every GPU of the node (torchrun, nproc = GPU count; skipped,
#      and the table says so, when the node has one GPU)                          (limit  90 s)
#   4. forge_nb SFT steps/s (depth 12, 8 x 1024 packed)                           (limit  60 s)
#   5. forge_nb GRPO steps/s (depth 8, 8 prompts x 4 generations x 32 tokens)     (limit  65 s)
# Worst case 465 s of parts + ~10 s of start and table: under 8 minutes.
# Each part is its own process under its own `timeout`, so one failure or hang costs only its slot; the table says
# which part failed and why. MFU formula and peak: see bench/bench_gpu.py's docstring.
#
#   bash bench/gpu.sh             # on the GPU machine (after scripts/setup.sh with a CUDA torch)
#   bash bench/gpu.sh --dry-run   # on CPU: tiny model, every code path (bf16 autocast, flex attention, compile, FSDP2), ~1-2 min
# Logs: bench/out/gpu/<part>.log (GPU_BENCH_OUT overrides); the table is also written to bench/out/gpu/table.md.
# GPU_BENCH_PARTS="pretrain_eager sft" runs only those parts.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DRY=""
if [ "${1:-}" = "--dry-run" ]; then DRY="--dry-run"; fi
OUT=${GPU_BENCH_OUT:-bench/out/gpu}
mkdir -p "$OUT"; rm -f "$OUT"/*.log "$OUT"/*.rc "$OUT"/table.md
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ -z "$DRY" ] && [ "$NGPU" = 0 ]; then echo "bench/gpu.sh: no CUDA GPU visible (torch.cuda.device_count() = 0); use --dry-run on CPU" >&2; exit 2; fi
if [ -n "$DRY" ]; then NPROC=2; SCALE=${GPU_BENCH_SCALE:-4}; else NPROC=$NGPU; SCALE=1; fi   # a dry run on a small CPU gets 4x the limits (GPU_BENCH_SCALE: more, on a loaded machine)
PARTS=${GPU_BENCH_PARTS:-pretrain_eager pretrain_compile pretrain_fsdp sft grpo}
"$PY" - <<'EOF'
import torch, platform
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, python {platform.python_version()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i); print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB")
EOF

part() {   # part NAME LIMIT_S CMD...: run CMD under `timeout`, its output to NAME.log, exit status and seconds to NAME.rc
  local name=$1 limit=$(( $2 * SCALE )); shift 2
  case " $PARTS " in *" $name "*) ;; *) return 0;; esac
  local t0=$SECONDS
  echo "[gpu.sh] $name (limit ${limit}s): $*"
  timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$rc $((SECONDS - t0))" >"$OUT/$name.rc"
  echo "[gpu.sh] $name: exit $rc in $((SECONDS - t0)) s; $(grep -v '^FORGE_BENCH' "$OUT/$name.log" | tail -n 1 | cut -c1-200)"
}

part pretrain_eager 100 "$PY" bench/bench_gpu.py pretrain $DRY
part pretrain_compile 150 "$PY" bench/bench_gpu.py pretrain --compile $DRY
if [ "$NPROC" -ge 2 ]; then
  part pretrain_fsdp 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" bench/bench_gpu.py pretrain --fsdp $DRY
else
  echo "[gpu.sh] pretrain_fsdp: skipped: this node has one GPU (FSDP2 across GPUs needs two or more)"
  echo "this node has one GPU (FSDP2 across GPUs needs two or more); the 1-GPU figures are above" >"$OUT/pretrain_fsdp.skipped"
fi
part sft 60 "$PY" bench/bench_gpu.py sft $DRY
part grpo 65 "$PY" bench/bench_gpu.py grpo $DRY
echo
"$PY" bench/bench_gpu.py table "$OUT" | tee "$OUT/table.md"
