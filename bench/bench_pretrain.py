"""Throughput of forge_nb's whole pretraining step (optimizer included) against plain-PyTorch loops: one with the
same optimizer as torch ships it, one with plain AdamW. Same model, same init, same batches, same process; windows
interleaved (the order rotates) so machine load hits all alike. Prints the median tokens/s of each and the ratios,
plus the median ratio of adjacent windows (robust when other processes load the machine), the CPU capability
(`torch.backends.cpu.get_cpu_capability()`), what a bf16 and an fp32 matmul cost here, and how long the data loader
takes per step next to the step itself.

    .venv/bin/python bench/bench_pretrain.py                 # the default optimizer (Muon), depth 4 (256 wide), 8 × 128 tokens per step
    .venv/bin/python bench/bench_pretrain.py --optim adamw   # forge_nb's AdamW step (then both baselines are plain AdamW)
    .venv/bin/python bench/bench_pretrain.py --compile       # forge_nb's layers compiled (inductor), against the eager loops
    .venv/bin/python bench/bench_pretrain.py --quick         # 7 windows, 1 warm-up step (what `bench/run --quick` runs)

A slow optimizer step shows as a low forge / plain-AdamW ratio: with `torch.optim.Muon` as torch ships it
(Newton–Schulz in bf16) a CPU without native bf16 matmul (AVX2) ran the step several times slower than AdamW;
forge_nb's `Muon` picks the dtype for the machine (`forge_nb.pretrain.ns_precision`), and the ratio against the
plain loop with torch's Muon shows what that buys.

forge_nb's loop is exactly the per-step work of `run_pretrain`: `check_batch`, `train_step` (summed-token loss,
grad-sync control, clipping, the optimizer `make_optimizer` builds, scheduler) and reading the loss and grad norm
back every `--log-every` steps. The plain loops are `model(input_ids, position_ids, labels, use_cache=False)
.loss.backward(); opt.step(); opt.zero_grad()` with `torch.optim.AdamW`'s defaults (and, for Muon,
`torch.optim.Muon` on the same hidden matrices + AdamW on the rest). All pass the store's position ids
(document-masked attention; `--no-doc-mask`: none does). Data loading is outside the step timings (batches are read
once, up front, and that reading is timed on its own: the loader runs in the training process, between steps, so it
never competes with a step for the cores, it only adds its own time).
"""
import argparse, copy, json, os, statistics, sys, tempfile, time
from pathlib import Path

import torch
from benchlib import emit, figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forge_nb.config import PipelineConfig, DataConfig, SourceConfig
from forge_nb.data.store import run_data_stage, TokenStore
from forge_nb.model import build_model, count_params
from forge_nb.pretrain import (Runtime, TrainState, make_optimizer, make_scheduler, train_step, step_loss, check_batch,
                               seed_everything, _scalar, optimizer_groups, ns_precision, prepare_model)


def build_store(d: Path, seq_len: int, vocab: int = 2048) -> TokenStore:
    import sysconfig, pydoc_data.topics as topics
    lib = Path(sysconfig.get_paths()["stdlib"])
    (d/"ref.jsonl").write_text("".join(json.dumps({"text": v}) + "\n" for k, v in sorted(topics.topics.items())))
    cfg = PipelineConfig(name="bench", runs_dir=str(d),
        data=DataConfig(sources=[SourceConfig(name="code", path=str(lib/"json"/"*.py"), kind="text"),
                                 SourceConfig(name="ref", path=str(d/"ref.jsonl"))],
                        strategy="static", weights=[0.5, 0.5], seq_len=seq_len, val_docs=2, total_tokens=300_000, max_epochs=20),
        tokenizer={"vocab_size": vocab, "train_bytes": 300_000})
    run_data_stage(cfg, d/"bench", log=lambda *a: None)
    return TokenStore(d/"bench"/"data"), cfg


def matmul_ms(n: int = 256, reps: int = 5) -> dict:
    "Median ms of an n×n matmul in fp32 and in bf16 on this CPU."
    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x, y = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt); x @ y
        ts = []
        for _ in range(reps):
            t = time.perf_counter(); x @ y; ts.append(time.perf_counter() - t)
        out[name] = statistics.median(ts) * 1e3
    return out


def plain_optimizer(model, name: str, o):
    "The optimizer a plain PyTorch loop would use: torch's AdamW, or torch's Muon (as shipped) on the hidden matrices + AdamW."
    if name == "adamw": return [torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)]
    g = optimizer_groups(model)
    return [torch.optim.Muon(g["matrices"], lr=o.muon_lr, momentum=o.muon_momentum, weight_decay=o.muon_weight_decay),
            torch.optim.AdamW(g["embed_head"] + g["vectors"], lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=4); ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--width", type=int, default=0, help="hidden size (default: the config's, depth × 64)")
    ap.add_argument("--vocab", type=int, default=2048, help="tokenizer vocabulary")
    ap.add_argument("--batch", type=int, default=8); ap.add_argument("--steps", type=int, default=1, help="steps per timed window")
    ap.add_argument("--windows", type=int, default=41); ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--log-every", type=int, default=10); ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--optim", choices=["muon", "adamw"], default=None, help="forge_nb's optimizer (default: the config's default)")
    ap.add_argument("--compile", action="store_true", help="compile forge_nb's decoder layers (pretrain.compile, inductor)")
    ap.add_argument("--no-doc-mask", action="store_true", help="plain causal attention in all loops (no position ids)")
    ap.add_argument("--json", type=str, default=None)
    ap.add_argument("--quick", action="store_true", help="7 windows, 1 warm-up step")
    a = ap.parse_args()
    if a.quick: a.windows, a.warmup = 7, 1
    if a.threads: torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as d:
        store, cfg = build_store(Path(d), a.seq_len, a.vocab)
        cfg.model = cfg.model.model_copy(update={"depth": a.depth, "max_seq_len": a.seq_len,
                                                 **({"aspect_ratio": a.width // a.depth} if a.width else {})})
        n_batches = a.warmup + a.windows * a.steps
        loader = store.loader(micro_batch_size=a.batch)
        t = time.perf_counter()
        batches = [next(loader) for _ in range(n_batches)]
        load_ms = (time.perf_counter() - t) / n_batches * 1e3
    V = store.vocab_size
    optim = a.optim or cfg.pretrain.optim.name
    cfg.pretrain.optim = o = cfg.pretrain.optim.model_copy(update={"name": optim})
    cap, mm = torch.backends.cpu.get_cpu_capability(), matmul_ms()
    ns_dtype, why = ns_precision("cpu", o.muon_precision)
    seed_everything(0)
    base = build_model(cfg.model, V)
    rt = Runtime(torch.device("cpu"), None, grad_clip=o.grad_clip, doc_mask=not a.no_doc_mask)

    # forge_nb: the step run_pretrain runs, with the optimizer make_optimizer builds
    m_forge = copy.deepcopy(base)
    if a.compile: prepare_model(m_forge, cfg.pretrain.model_copy(update={"compile": True}), rt)
    opt_f = make_optimizer(m_forge, o)
    state = TrainState(m_forge, opt_f, make_scheduler(opt_f, o, 10**6), loader=None)
    def forge_step(b):
        out = train_step(state, [check_batch(b, V)], rt)
        if state.step % a.log_every == 0: step_loss(out), _scalar(out["grad_norm"])

    def plain_loop(name):
        m = copy.deepcopy(base); opts = plain_optimizer(m, name, o)
        def step(b):
            pos = {} if a.no_doc_mask else {"position_ids": b["position_ids"]}
            loss = m(input_ids=b["input_ids"], labels=b["labels"], use_cache=False, **pos).loss
            loss.backward()
            for opt in opts: opt.step(); opt.zero_grad(set_to_none=True)
        return step
    loops = {"forge": forge_step, "plain": plain_loop(optim)}
    if optim != "adamw": loops["plain_adamw"] = plain_loop("adamw")

    tokens = a.batch * a.seq_len
    t = time.perf_counter()
    for b in batches[:a.warmup]: forge_step(b)
    warm_s = time.perf_counter() - t
    for b in batches[:a.warmup]:
        for k, fn in loops.items():
            if k != "forge": fn(b)
    res = {k: [] for k in loops}
    names = list(loops)
    for w in range(a.windows):
        chunk = batches[a.warmup + w * a.steps: a.warmup + (w + 1) * a.steps]
        for name in names[w % len(names):] + names[:w % len(names)]:      # rotate the order
            t = time.perf_counter()
            for b in chunk: loops[name](b)
            res[name].append(len(chunk) * tokens / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in res.items()}
    paired = {k: statistics.median(x / y for x, y in zip(res["forge"], res[k])) for k in res if k != "forge"}
    n = count_params(cfg.model, V)["total"]
    print(f"CPU capability: {cap}; {torch.get_num_threads()} threads; 256×256 matmul: fp32 {mm['fp32']:.3f} ms, bf16 {mm['bf16']:.3f} ms "
          f"({mm['bf16'] / mm['fp32']:.1f}×); load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if optim == "muon": print(f"forge_nb Muon: Newton–Schulz in {'bf16' if ns_dtype == torch.bfloat16 else 'fp32'} ({why}); "
                              f"the plain loop: torch.optim.Muon as shipped (bf16)")
    print(f"attention: {'causal' if a.no_doc_mask else 'document-masked (position ids)'}; forge_nb compiled: {a.compile}"
          + (f" ({a.warmup} warm-up step(s), compiling included: {warm_s:.1f} s)" if a.compile else ""))
    print(f"model: {cfg.model.arch} depth {a.depth}, width {base.config.hidden_size}, vocab {V}, {n/1e6:.2f}M params; batch {a.batch} × {a.seq_len} tokens; "
          f"{a.windows} windows × {a.steps} steps after {a.warmup} warmup")
    label = {"forge": f"forge_nb ({optim})", "plain": f"plain PyTorch ({optim})", "plain_adamw": "plain PyTorch (AdamW)"}
    for k, v in res.items():
        print(f"{label[k]:<24}: median {med[k]:,.0f} tokens/s = {tokens / med[k] * 1e3:,.1f} ms/step   (windows: {', '.join(f'{x:,.0f}' for x in v)})")
    for k in paired:
        print(f"ratio forge_nb / {label[k]} = {med['forge'] / med[k]:.3f} (medians); median of paired adjacent windows = {paired[k]:.3f}")
    step_ms = tokens / med["forge"] * 1e3
    print(f"data loader: {load_ms:.2f} ms per batch, read between steps in the training process ({load_ms / step_ms:.1%} of a forge_nb step)")
    what = (f"pretrain step tokens/s, {optim}{' compiled' if a.compile else ''} (depth {a.depth} x {base.config.hidden_size}, "
            f"{a.batch}x{a.seq_len}, CPU {cap})")
    figs = [figure(what, med["forge"], "tokens/s", f"plain PyTorch loop, torch's {optim} (same model, batches, process)", med["plain"],
                   note=f"paired windows {paired['plain']:.3f}")]
    if "plain_adamw" in med:
        figs.append(figure(what, med["forge"], "tokens/s", "plain PyTorch loop, AdamW", med["plain_adamw"],
                           note=f"paired windows {paired['plain_adamw']:.3f}"))
    figs.append(figure("data loader ms per batch", load_ms, "ms", "forge_nb step", step_ms, better="lower"))
    emit("pretrain", figs, quick=a.quick, windows=a.windows, cpu_capability=cap)
    if a.json:
        Path(a.json).write_text(json.dumps({"tokens_per_s": med, "paired_ratio": paired, "windows": res, "cpu_capability": cap,
                                            "matmul_ms": mm, "load_ms": load_ms, "args": vars(a), "params": n,
                                            "load_average": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
