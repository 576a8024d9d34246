"""Throughput of forge_nb's pretraining step vs a minimal plain-PyTorch loop: same model, same init, same batches,
same process; windows interleaved so machine load hits both alike. Prints the median tokens/s of each and the ratio,
plus the median ratio of adjacent window pairs (robust when other processes load the machine) and of the best windows.

    .venv/bin/python bench/bench_pretrain.py                 # depth 4 (256 wide), 8 × 128 tokens per step, 41 one-step windows
    .venv/bin/python bench/bench_pretrain.py --depth 6 --windows 9 --steps 8 --json out.json
    .venv/bin/python bench/bench_pretrain.py --quick         # 7 windows, 1 warm-up step (what `bench/run --quick` runs)

forge_nb's loop is exactly the per-step work of `run_pretrain`: `check_batch`, `train_step` (summed-token loss,
grad-sync control, clipping, foreach/fused AdamW, scheduler) and reading the loss and grad norm back every
`--log-every` steps. The plain loop is `model(input_ids, position_ids, labels, use_cache=False).loss.backward();
opt.step(); opt.zero_grad()` with `torch.optim.AdamW`'s defaults. Both pass the store's position ids (document-masked
attention; `--no-doc-mask`: neither does). `use_cache=False` matters: with the default a training forward builds a KV
cache, and transformers then ignores the position ids when building the mask (no document masking: less work).
Data loading is outside both timings (batches are read once, up front).
"""
import argparse, copy, json, statistics, sys, tempfile, time
from pathlib import Path

import torch
from benchlib import emit, figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forge_nb.config import PipelineConfig, DataConfig, SourceConfig
from forge_nb.data.store import run_data_stage, TokenStore
from forge_nb.model import build_model, count_params
from forge_nb.pretrain import (Runtime, TrainState, make_optimizer, make_scheduler, train_step, step_loss, check_batch,
                               seed_everything, _scalar)


def build_store(d: Path, seq_len: int) -> TokenStore:
    import sysconfig, pydoc_data.topics as topics
    lib = Path(sysconfig.get_paths()["stdlib"])
    (d/"ref.jsonl").write_text("".join(json.dumps({"text": v}) + "\n" for k, v in sorted(topics.topics.items())))
    cfg = PipelineConfig(name="bench", runs_dir=str(d),
        data=DataConfig(sources=[SourceConfig(name="code", path=str(lib/"json"/"*.py"), kind="text"),
                                 SourceConfig(name="ref", path=str(d/"ref.jsonl"))],
                        strategy="static", weights=[0.5, 0.5], seq_len=seq_len, val_docs=2, total_tokens=300_000, max_epochs=20),
        tokenizer={"vocab_size": 2048, "train_bytes": 300_000})
    run_data_stage(cfg, d/"bench", log=lambda *a: None)
    return TokenStore(d/"bench"/"data"), cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=4); ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8); ap.add_argument("--steps", type=int, default=1, help="steps per timed window")
    ap.add_argument("--windows", type=int, default=41); ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--log-every", type=int, default=10); ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-doc-mask", action="store_true", help="plain causal attention in both loops (no position ids)")
    ap.add_argument("--json", type=str, default=None)
    ap.add_argument("--quick", action="store_true", help="7 windows, 1 warm-up step")
    a = ap.parse_args()
    if a.quick: a.windows, a.warmup = 7, 1
    if a.threads: torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as d:
        store, cfg = build_store(Path(d), a.seq_len)
        cfg.model = cfg.model.model_copy(update={"depth": a.depth, "max_seq_len": a.seq_len})
        n_batches = a.warmup + a.windows * a.steps
        loader = store.loader(micro_batch_size=a.batch)
        batches = [next(loader) for _ in range(n_batches)]
    V = store.vocab_size
    seed_everything(0)
    base = build_model(cfg.model, V)
    rt = Runtime(torch.device("cpu"), None, grad_clip=cfg.pretrain.optim.grad_clip, doc_mask=not a.no_doc_mask)

    # forge_nb: the step run_pretrain runs
    m_forge = copy.deepcopy(base); opt_f = make_optimizer(m_forge, cfg.pretrain.optim)
    state = TrainState(m_forge, opt_f, make_scheduler(opt_f, cfg.pretrain.optim, 10**6), loader=None)
    def forge_step(b):
        out = train_step(state, [check_batch(b, V)], rt)
        if state.step % a.log_every == 0: step_loss(out), _scalar(out["grad_norm"])

    # plain PyTorch
    m_plain = copy.deepcopy(base); o = cfg.pretrain.optim
    opt_p = torch.optim.AdamW(m_plain.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
    def plain_step(b):
        pos = {} if a.no_doc_mask else {"position_ids": b["position_ids"]}
        loss = m_plain(input_ids=b["input_ids"], labels=b["labels"], use_cache=False, **pos).loss
        loss.backward(); opt_p.step(); opt_p.zero_grad(set_to_none=True)

    tokens = a.batch * a.seq_len
    for b in batches[:a.warmup]: forge_step(b); plain_step(b)
    res = {"forge": [], "plain": []}
    for w in range(a.windows):
        chunk = batches[a.warmup + w * a.steps: a.warmup + (w + 1) * a.steps]
        order = [("forge", forge_step), ("plain", plain_step)] if w % 2 == 0 else [("plain", plain_step), ("forge", forge_step)]
        for name, fn in order:
            t = time.perf_counter()
            for b in chunk: fn(b)
            res[name].append(len(chunk) * tokens / (time.perf_counter() - t))
    f, p = statistics.median(res["forge"]), statistics.median(res["plain"])
    n = count_params(cfg.model, V)["total"]
    print(f"attention: {'causal' if a.no_doc_mask else 'document-masked (position ids)'}")
    print(f"model: {cfg.model.arch} depth {a.depth}, {n/1e6:.2f}M params; batch {a.batch} × {a.seq_len} tokens; "
          f"{torch.get_num_threads()} threads; {a.windows} windows × {a.steps} steps after {a.warmup} warmup")
    print(f"forge_nb loop : median {f:,.0f} tokens/s   (windows: {', '.join(f'{x:,.0f}' for x in res['forge'])})")
    print(f"plain PyTorch : median {p:,.0f} tokens/s   (windows: {', '.join(f'{x:,.0f}' for x in res['plain'])})")
    paired = statistics.median(x / y for x, y in zip(res["forge"], res["plain"]))
    print(f"ratio forge/plain = {f / p:.3f} (medians); median of paired adjacent windows = {paired:.3f}; "
          f"best windows = {max(res['forge']) / max(res['plain']):.3f}")
    emit("pretrain", [figure(f"pretrain step tokens/s (depth {a.depth}, {a.batch}x{a.seq_len})", f, "tokens/s",
                             "plain PyTorch loop (same model, batches, process)", p, note=f"paired windows {paired:.3f}")],
         quick=a.quick, windows=a.windows)
    if a.json:
        Path(a.json).write_text(json.dumps({"forge_tokens_per_s": f, "plain_tokens_per_s": p, "ratio": f / p,
                                            "paired_ratio": paired, "windows": res,
                                            "args": vars(a), "params": n}, indent=2))


if __name__ == "__main__":
    main()
