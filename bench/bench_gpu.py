"""The parts of `bench/gpu.sh`, one process each (so a part that fails or runs out of time costs only its own slot).

    python bench/bench_gpu.py pretrain [--compile] [--fsdp] [--dry-run]   # MFU of pretraining steps (torchrun for --fsdp)
    python bench/bench_gpu.py sft [--dry-run]                            # forge_nb SFT steps/s
    python bench/bench_gpu.py grpo [--dry-run]                           # forge_nb GRPO steps/s
    python bench/bench_gpu.py table DIR                                  # one table from the parts' logs in DIR

Pretraining runs forge_nb's own step (`prepare_model`, `parallelize`, `make_optimizer`, `train_step`) on synthetic
packed batches: random tokens in documents of random length (mean ~512 tokens), so document masking is exercised
(flex_attention with a document `BlockMask` on GPU). MFU = achieved model FLOP/s per GPU / the GPU's dense bf16 peak,
with model FLOPs per token = 6·N_matmul + 12·L·H·d_head·T (`forge_nb.model.flops_per_token`: N_matmul = non-embedding
parameters + the output head; the attention term counts the full T×T score and value products, the usual
nanoGPT/PaLM convention, although causal + document masking computes less than half of them), and the peak from
`forge_nb.model.GPU_PEAK_FLOPS` (H100/H200 SXM: 989 TFLOP/s dense bf16). `--dry-run`: a tiny model on CPU that runs
every code path (bf16 autocast, flex attention under `force_eager`, compile with the `aot_eager` backend, FSDP2 over
gloo) in seconds.
"""
import argparse, sys, tempfile, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent)); sys.path.insert(0, str(HERE))
from benchlib import emit, figure, parse   # noqa: E402

# name of each part as gpu.sh runs it -> its log file stem
PARTS = ["pretrain_eager", "pretrain_compile", "pretrain_fsdp", "sft", "grpo"]


def synthetic_batch(batch: int, T: int, vocab: int, gen) -> dict:
    "Random tokens packed as documents of random length (exponential, mean T/4, at least 16): input ids, labels, positions."
    import torch
    pos = torch.empty(batch, T, dtype=torch.long)
    for b in range(batch):
        i = 0
        while i < T:
            n = min(T - i, max(16, int(torch.empty(1).exponential_(4 / T, generator=gen).item())))
            pos[b, i:i + n] = torch.arange(n); i += n
    ids = torch.randint(0, vocab, (batch, T), generator=gen)
    return {"input_ids": ids, "labels": ids.clone(), "position_ids": pos}


def bench_pretrain(a) -> list:
    import torch
    from forge_nb.config import ModelConfig, PretrainConfig
    from forge_nb.distributed import init_distributed, shutdown_distributed
    from forge_nb.model import build_model, count_params, flops_per_token, peak_flops_for, human_count
    from forge_nb.model import attention_implementation
    from forge_nb.pretrain import (make_runtime, prepare_model, parallelize, make_optimizer, make_scheduler, TrainState,
                                   train_step, step_loss, seed_everything, lm_loss_sum)
    env = init_distributed()
    cuda = torch.cuda.is_available()
    if a.dry_run: depth, T, B, V, warm, secs = 2, 64, 2, 512, 2, 1.0
    else: depth, T, B, V, warm, secs = a.depth, a.seq_len, a.batch, a.vocab, (4 if a.compile else 3), a.seconds
    mc = ModelConfig(depth=depth, max_seq_len=T)
    pc = PretrainConfig(precision="bf16", attention="auto", compile=a.compile,
                        compile_backend="aot_eager" if a.dry_run else "inductor", parallel="fsdp" if a.fsdp else "none")
    rt = make_runtime(pc, env)
    seed_everything(0)
    with rt.device:                                  # initialise the weights on the GPU (a 0.7B model is slow to fill on CPU)
        model = prepare_model(build_model(mc, V), pc, rt)
    model = parallelize(model, pc.parallel, env, rt.device)
    opt = make_optimizer(model, pc.optim)
    state = TrainState(model, opt, make_scheduler(opt, pc.optim, 10**6), loader=None)
    gen = torch.Generator().manual_seed(env.rank)
    batches = [synthetic_batch(B, T, V, gen) for _ in range(4)]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t_first = time.perf_counter()
    for i in range(warm): loss = step_loss(train_step(state, [batches[i % 4]], rt))
    sync(); warm_s = time.perf_counter() - t_first
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < secs or steps < 2:
        out = train_step(state, [batches[steps % 4]], rt); steps += 1
    loss = step_loss(out); sync()
    dt = time.perf_counter() - t0
    flex_gap = flex_vs_sdpa(model, batches[0], rt, lm_loss_sum, attention_implementation)
    tps_rank = steps * B * T / dt
    fpt = flops_per_token(mc, V, T)
    name = torch.cuda.get_device_name(rt.device) if cuda else "cpu"
    peak = peak_flops_for(name) if cuda else None
    n = count_params(mc, V)["total"]
    mem = torch.cuda.max_memory_allocated(rt.device) / 2**30 if cuda else None
    if env.is_main:
        compiled = sum(getattr(l, "_compiled_call_impl", None) is not None for l in state.model.model.layers)
        print(f"{name}: depth {depth} ({human_count(n)} params, {compiled} compiled layers), {B}x{T} tokens per rank, vocab {V}, {env.world_size} rank(s), "
              f"compile={a.compile} ({pc.compile_backend}), fsdp={a.fsdp}, attention={rt.attention}, bf16 autocast")
        print(f"warm-up {warm} steps in {warm_s:.1f} s; {steps} timed steps in {dt:.1f} s; loss {loss:.3f}; "
              f"{tps_rank:,.0f} tokens/s per rank; FLOPs/token {fpt / 1e9:.3f} G; peak {peak and peak / 1e12} TFLOP/s; "
              f"max CUDA memory {mem and round(mem, 1)} GiB")
        print(f"document masking: flex_attention (BlockMask) vs SDPA (dense mask) mean loss on one batch: |Δ| = {flex_gap:.2e}")
    label = ("FSDP2, " + (f"{env.world_size} GPUs" if cuda else f"{env.world_size} CPU ranks") if a.fsdp else "1 GPU" if cuda else "CPU") \
            + (", torch.compile" if a.compile else ", eager")
    tflops = tps_rank * fpt / 1e12
    figs = [figure(f"pretrain {human_count(n)} bf16 ({label}) tokens/s per rank", tps_rank, "tokens/s"),
            figure(f"pretrain {human_count(n)} bf16 ({label}) achieved TFLOP/s per rank", tflops, "TFLOP/s",
                   f"{name} dense bf16 peak" if peak else None, peak / 1e12 if peak else None,
                   note=("MFU = ratio" if peak else "no peak known (CPU): no MFU")
                        + ("; only one GPU: FSDP2 shards nothing" if a.fsdp and cuda and env.world_size == 1 else "")),
            figure(f"pretrain ({label}) flex vs SDPA document-masked loss, one batch", flex_gap, "nats (abs. difference)", better="lower",
                   note="bf16" if rt.amp_dtype is not None else "fp32")]
    if env.is_main: emit("gpu pretrain", figs, quick=a.dry_run, world_size=env.world_size, warmup_s=warm_s, max_mem_gib=mem)
    shutdown_distributed()


def flex_vs_sdpa(model, batch, rt, lm_loss_sum, attention_implementation) -> float:
    "Mean loss on one batch with flex_attention + a document BlockMask and with SDPA + its dense mask (no grad, eager)."
    import dataclasses, torch
    batch = {k: v[:2] for k, v in batch.items()}                      # two rows: eager flex materializes the scores
    n = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):   # eager: no recompile of compiled layers, and CPU flex
        with attention_implementation(model, "flex_attention"):
            flex = float(lm_loss_sum(model, batch, dataclasses.replace(rt, attention="flex_attention"))) / n
        with attention_implementation(model, "sdpa"):
            sdpa = float(lm_loss_sum(model, batch, dataclasses.replace(rt, attention="sdpa"))) / n
    return abs(flex - sdpa)


def bench_sft(a):
    import torch
    import transformers; transformers.logging.set_verbosity_error()
    from forge_nb.config import SFTConfig
    from bench_sft import make_inputs, run_forge
    depth, T, B, steps = (2, 128, 2, 4) if a.dry_run else (12, 1024, 8, 30)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        model_dir, data = make_inputs(d, depth, T)
        sc = SFTConfig(max_seq_len=T, micro_batch_size=B, lr=1e-4, warmup_steps=2, log_every=10, eval_every=10**6, heldout_fraction=0.0)
        t0 = time.perf_counter()
        sps, tps = run_forge(model_dir, data, sc, steps, d/"forge")
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"{dev}: SFT depth {depth}, {B}x{T} packed, {steps} steps: {sps:.2f} steps/s, {tps:,.0f} tokens/s ({time.perf_counter() - t0:.0f} s)")
    emit("gpu sft", [figure(f"SFT steps/s (depth {depth}, {B}x{T}, {dev})", sps, "steps/s"),
                     figure(f"SFT tokens/s (depth {depth}, {B}x{T}, {dev})", tps, "tokens/s")], quick=a.dry_run)


def bench_grpo(a):
    import torch
    import transformers; transformers.logging.set_verbosity_error()
    from forge_nb.demo import demo_task
    from forge_nb.trl_stage import tiny_chat_model
    from bench_rl import run_forge
    depth, sft_steps, steps = (2, 3, 3) if a.dry_run else (8, 20, 12)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        task = demo_task(d/"task", n_chat=200, n_prompts=64, n_heldout=8)
        base = tiny_chat_model(d/"model", task["chat"], steps=sft_steps, depth=depth)
        step_s, tps = run_forge(base, task, d/"forge", steps, seed=0)
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"{dev}: GRPO depth {depth}, batch 8 x 4 generations x 32 tokens, {steps} steps: {1 / step_s:.2f} steps/s, {tps:,.0f} tokens/s")
    emit("gpu grpo", [figure(f"GRPO steps/s (depth {depth}, 8 prompts x 4 gens x 32 tokens, {dev})", 1 / step_s, "steps/s"),
                      figure(f"GRPO tokens/s (depth {depth}, {dev})", tps, "tokens/s")], quick=a.dry_run)


def table(folder: Path) -> str:
    "One Markdown table from the parts' logs (`<part>.log`, each ending in a FORGE_BENCH line, and `<part>.rc`)."
    import importlib.util
    from importlib.machinery import SourceFileLoader
    spec = importlib.util.spec_from_loader("bench_run", SourceFileLoader("bench_run", str(HERE/"run")))
    run = importlib.util.module_from_spec(spec); spec.loader.exec_module(run)
    rows = []
    for part in PARTS:
        log, rc, skipped = folder/f"{part}.log", folder/f"{part}.rc", folder/f"{part}.skipped"
        if skipped.exists(): rows.append([part, "skipped: " + skipped.read_text().strip(), "–", "–", "–", "–", "–", "–"]); continue
        if not log.exists(): rows.append([part, "not run", "–", "–", "–", "–", "–", "–"]); continue
        text = log.read_text(errors="replace")
        code = int(rc.read_text().split()[0]) if rc.exists() else -1
        secs = rc.read_text().split()[1] + " s" if rc.exists() and len(rc.read_text().split()) > 1 else "–"
        note = {124: "TIMED OUT", 137: "KILLED (timeout)"}.get(code)
        r = {"output": text, "rc": code, "seconds": 0.0, "peak_rss_mb": 0.0}
        got = run.rows_of(part, r)
        for g in got:
            g[6] = "–"; g[7] = secs
            if note and parse(text) is None: g[1] = f"{note} (exit {code}): {run.why(text)}"
        rows += got
    return run.table(rows).replace("peak RSS (bench tree)", "peak RSS").replace("wall (CPU)", "wall")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["pretrain", "sft", "grpo", "table"])
    ap.add_argument("folder", nargs="?", help="table: the folder of the parts' logs")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU: every code path in seconds")
    ap.add_argument("--compile", action="store_true"); ap.add_argument("--fsdp", action="store_true")
    ap.add_argument("--depth", type=int, default=24, help="24: 1536 wide, 0.73B parameters with vocab 32768")
    ap.add_argument("--seq-len", type=int, default=2048); ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=32768); ap.add_argument("--seconds", type=float, default=15.0)
    a = ap.parse_args(argv)
    if a.part == "table": print(table(Path(a.folder))); return
    {"pretrain": bench_pretrain, "sft": bench_sft, "grpo": bench_grpo}[a.part](a)


if __name__ == "__main__":
    main()
