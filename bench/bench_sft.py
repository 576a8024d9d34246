"""SFT throughput: forge_nb's SFT stage vs plain TRL `SFTTrainer`, same model, same data, same settings, same process;
rounds interleaved (alternating which goes first) so machine load hits both alike. Prints the median optimizer
steps/s of each, the ratio (goal >= 0.97) and the median of per-round ratios; then forge_nb's tokens/s with and
without packing.

    .venv/bin/python bench/bench_sft.py                       # depth 4, 8 sequences × 256 tokens, 7 rounds × 20 steps
    .venv/bin/python bench/bench_sft.py --rounds 9 --steps 30 --json out.json
    .venv/bin/python bench/bench_sft.py --quick               # 1 round × 6 steps, no unpacked run (`bench/run --quick`)

forge_nb's side is what `run_sft` runs: `load_sft_data` (its records checked, tokenized with the template's
assistant mask, mixed by token share), `trl_args` (bfd packing, padding-free), the metrics callback writing
`metrics.jsonl`. Plain TRL gets the same conversations as a `messages` dataset with `assistant_only_loss=True`,
`packing=True` (bfd) and the same batch, lr, schedule, precision. Both start from the same saved model folder.
Steps are timed from the end of the first step to the end of the last (dataset preparation and the first, slow
step are outside the timing for both).
"""
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path

import torch
from benchlib import emit, figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forge_nb.config import PipelineConfig, SourceConfig, ModelConfig, SFTConfig
from forge_nb.runs import StageDir
from forge_nb.data.tokenizer import train_tokenizer
from forge_nb.data.sft_examples import build_sft_examples
from forge_nb.model import build_model
from forge_nb.sft import load_sft_data, trl_args, _metrics_callback, read_sft_file


def make_inputs(d: Path, depth: int, seq_len: int):
    "A model folder (tokenizer with chat template + a fresh Llama) and SFT examples built from the stdlib docs."
    import sysconfig, pydoc_data.topics as topics
    lib = Path(sysconfig.get_paths()["stdlib"])
    (d/"ref.jsonl").write_text("".join(json.dumps({"text": v, "topic": k}) + "\n" for k, v in sorted(topics.topics.items())))
    srcs = [SourceConfig(name="ref", path=str(d/"ref.jsonl")), SourceConfig(name="code", path=str(lib/"json"/"*.py"), kind="text")]
    build_sft_examples(srcs, d/"examples", heldout_fraction=0.0)
    tok = train_tokenizer(list(topics.topics.values()), vocab_size=2048, model_max_length=seq_len)
    torch.manual_seed(0)
    m = build_model(ModelConfig(depth=depth, max_seq_len=seq_len), len(tok), bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    m.save_pretrained(d/"model"); tok.save_pretrained(d/"model")
    return d/"model", d/"examples"/"train.jsonl"


class Timer:
    "Trainer callback: wall time at the end of each step, and the trainer's token count there."
    def __init__(self): self.t, self.tok, self.trainer = [], [], None
    def hook(self):
        from transformers import TrainerCallback
        outer = self
        class _T(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                outer.t.append(time.perf_counter()); outer.tok.append(getattr(outer.trainer, "_total_train_tokens", 0))
        return _T()
    def rates(self):
        dt = self.t[-1] - self.t[0]
        return (len(self.t) - 1) / dt, (self.tok[-1] - self.tok[0]) / dt


def run_forge(model_dir, data, sc: SFTConfig, steps: int, out: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer
    from datasets import Dataset
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    sd = StageDir(out/"sft", "sft"); sd.mkdirs()
    d = load_sft_data(sc.model_copy(update={"dataset": str(data)}), tok, log=lambda *a: None)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    timer = Timer()
    args = trl_args(sc, out/"ck", max_steps=steps, save_strategy="no")
    tr = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(d["train"]), processing_class=tok,
                    callbacks=[_metrics_callback(sd, d["heldout"], tok, sc, True, lambda *a: None), timer.hook()])
    timer.trainer = tr; tr.train()
    return timer.rates()


def run_plain(model_dir, data, sc: SFTConfig, steps: int, out: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer, SFTConfig as TRLConfig
    from datasets import Dataset
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    convs = [{"messages": c} for c in read_sft_file(str(data))]
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    timer = Timer()
    args = TRLConfig(output_dir=str(out/"ck"), per_device_train_batch_size=sc.micro_batch_size, learning_rate=sc.lr,
                     lr_scheduler_type=sc.schedule, warmup_steps=sc.warmup_steps, max_steps=steps, max_length=sc.max_seq_len,
                     packing=sc.packing, packing_strategy="bfd", assistant_only_loss=True, logging_steps=sc.log_every,
                     save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
                     dataloader_pin_memory=False, gradient_checkpointing=False, seed=sc.seed, disable_tqdm=True)
    tr = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(convs), processing_class=tok, callbacks=[timer.hook()])
    timer.trainer = tr; tr.train()
    return timer.rates()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=4); ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8); ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=7); ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=str, default=None)
    ap.add_argument("--quick", action="store_true", help="one round of 6 steps, depth 2, without the unpacked run")
    a = ap.parse_args()
    if a.quick: a.rounds, a.steps, a.depth = 1, 6, 2
    if a.threads: torch.set_num_threads(a.threads)
    import transformers; transformers.logging.set_verbosity_error()
    res = {"forge": [], "plain": [], "forge_tok": [], "plain_tok": [], "nopack_tok": []}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        model_dir, data = make_inputs(d, a.depth, a.seq_len)
        sc = SFTConfig(max_seq_len=a.seq_len, micro_batch_size=a.batch, lr=1e-3, warmup_steps=2, log_every=10,
                       eval_every=10**6, heldout_fraction=0.0)
        for r in range(a.rounds):
            order = ["forge", "plain"] if r % 2 == 0 else ["plain", "forge"]
            for who in order:
                fn = run_forge if who == "forge" else run_plain
                sps, tps = fn(model_dir, data, sc, a.steps, d/f"{who}{r}")
                res[who].append(sps); res[who + "_tok"].append(tps)
            if not a.quick:
                _, tps = run_forge(model_dir, data, sc.model_copy(update={"packing": False}), a.steps, d/f"nopack{r}")
            else: tps = float("nan")
            res["nopack_tok"].append(tps)
            print(f"round {r}: forge {res['forge'][-1]:.2f} steps/s, plain TRL {res['plain'][-1]:.2f} steps/s, "
                  f"ratio {res['forge'][-1] / res['plain'][-1]:.3f}; tokens/s packed {res['forge_tok'][-1]:,.0f}, "
                  f"unpacked {res['nopack_tok'][-1]:,.0f}", flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    out = {"rounds": a.rounds, "steps": a.steps, "depth": a.depth, "seq_len": a.seq_len, "batch": a.batch,
           "forge_steps_per_s": med["forge"], "plain_trl_steps_per_s": med["plain"], "ratio": med["forge"] / med["plain"],
           "median_round_ratio": statistics.median(f / p for f, p in zip(res["forge"], res["plain"])),
           "tokens_per_s_packed": med["forge_tok"], "tokens_per_s_unpacked": med["nopack_tok"],
           "plain_trl_tokens_per_s": med["plain_tok"], "raw": res}
    print(f"\nforge_nb SFT {out['forge_steps_per_s']:.2f} steps/s vs plain TRL {out['plain_trl_steps_per_s']:.2f} steps/s: "
          f"ratio {out['ratio']:.3f} (median per-round ratio {out['median_round_ratio']:.3f}; goal >= 0.97)")
    print(f"tokens/s (non-padding tokens through the model): packed {out['tokens_per_s_packed']:,.0f}, "
          f"unpacked {out['tokens_per_s_unpacked']:,.0f} ({out['tokens_per_s_packed'] / out['tokens_per_s_unpacked']:.2f}x)")
    if a.json: Path(a.json).write_text(json.dumps(out, indent=2))
    figs = [figure("SFT steps/s", out["forge_steps_per_s"], "steps/s", "plain TRL SFTTrainer (same model, data, settings)",
                   out["plain_trl_steps_per_s"], note=f"goal >= 0.97; median per-round {out['median_round_ratio']:.3f}")]
    if not a.quick:
        figs.append(figure("SFT tokens/s, packed (bfd)", out["tokens_per_s_packed"], "tokens/s", "forge_nb SFT unpacked",
                           out["tokens_per_s_unpacked"]))
    emit("sft", figs, quick=a.quick, rounds=a.rounds, steps=a.steps)


if __name__ == "__main__":
    main()
