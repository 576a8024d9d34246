"""RL benchmarks on this machine.

1. GRPO steps/s: forge_nb's RL stage (`run_rl`, method grpo: one reward function per policy rule, metrics.jsonl,
   checkpoints) against plain TRL `GRPOTrainer` with hand-written reward functions equivalent to the policy, same
   model, same prompts, same GRPO settings; rounds interleaved (the order alternates), median step time per run,
   then the median over rounds. Goal: forge/plain steps/s >= 0.97.
2. Policy scoring throughput: completions/s for a 10-rule regex policy on one core.

    python bench/bench_rl.py [--rounds 3] [--steps 12] [--out /tmp/bench-rl]
    python bench/bench_rl.py --quick          # one round of 5 steps (what `bench/run --quick` runs)
"""
import argparse, json, os, re, shutil, statistics, sys, time
from pathlib import Path
from benchlib import emit, figure

os.environ.setdefault("OMP_NUM_THREADS", "1")


def plain_rewards():
    "The demo policy's four rules written by hand, as TRL reward functions (no forge_nb)."
    def text(c): return c if isinstance(c, str) else c[0]["content"]
    def no_competitors(prompts, completions, **kw):
        return [0.0 if re.search(r"(?i)\bAcmeCorp\b|\bGlobex\b", text(c)) else 1.0 for c in completions]
    def pricing_disclaimer(prompts, completions, tags, **kw):
        return [(1.0 if "prices may change" in text(c).lower() else 0.0) if "pricing" in t else None for c, t in zip(completions, tags)]
    def cites_kb(prompts, completions, context, **kw):
        out = []
        for c, p, ctx in zip(completions, prompts, context):
            rx = r"\[([A-Za-z][A-Za-z0-9_.:-]*)\]"
            known = set(re.findall(rx, p[-1]["content"] + "\n" + ctx)); cited = set(re.findall(rx, text(c)))
            out.append(None if not known else 1.0 if cited and cited <= known else 0.5 if cited & known else 0.0)
        return out
    def concise(prompts, completions, **kw):
        return [1.0 if (n := len(text(c).split())) <= 24 else max(0.0, 1 - (n - 24) / 24) for c in completions]
    return [no_competitors, pricing_disclaimer, cites_kb, concise]


def step_times(times: list, tokens: list) -> tuple:
    "(median seconds between consecutive logged steps, tokens/s over the run), the first step (warm-up) excluded."
    d = [b - a for a, b in zip(times, times[1:])]
    return statistics.median(d[1:] if len(d) > 2 else d), (tokens[-1] - tokens[1]) / (times[-1] - times[1])


def run_forge(base, task, out: Path, steps: int, seed: int) -> float:
    from forge_nb.config import PipelineConfig
    from forge_nb.rl import run_rl
    from forge_nb.runs import read_metrics
    shutil.rmtree(out, ignore_errors=True)
    cfg = PipelineConfig(name=out.name, runs_dir=str(out.parent), stages=["rl"],
                         rl=dict(base_model=str(base), policy=task["policy"], prompts=task["prompts"], steps=steps, lr=1e-5,
                                 batch_size=8, num_generations=4, max_completion_length=32, beta=0.0, save_every=10_000, seed=seed))
    run_rl(cfg, out, log=lambda *a, **k: None)
    recs = [r for r in read_metrics(out / "rl" / "metrics.jsonl") if "reward" in r]
    return step_times([r["time"] for r in recs], [r["num_tokens"] for r in recs])


def run_plain(base, task, out: Path, steps: int, seed: int) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    shutil.rmtree(out, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(base)); model = AutoModelForCausalLM.from_pretrained(str(base))
    rows = [json.loads(l) for l in open(task["prompts"])]
    ds = Dataset.from_list([{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows])
    times, tokens = [], []
    class T(TrainerCallback):   # what forge_nb's metrics callback records: the time of each logged step
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "reward" in logs: times.append(time.time()); tokens.append(logs["num_tokens"])
    args = GRPOConfig(output_dir=str(out), max_steps=steps, learning_rate=1e-5, per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=32, beta=0.0, logging_steps=1, save_strategy="steps", save_steps=10_000, seed=seed,
                      lr_scheduler_type="constant_with_warmup", warmup_steps=0, gradient_checkpointing=False,
                      reward_weights=[1.0] * 4, report_to="none", disable_tqdm=True, use_cpu=True, bf16=False,
                      dataloader_pin_memory=False)
    from transformers.trainer_callback import PrinterCallback
    tr = GRPOTrainer(model=model, reward_funcs=plain_rewards(), args=args, train_dataset=ds, processing_class=tok, callbacks=[T()])
    tr.remove_callback(PrinterCallback)   # forge_nb removes it too (no printing in either)
    tr.train()
    return step_times(times, tokens)


def scoring_throughput(n: int = 5000) -> float:
    from forge_nb.policy import policy_from_yaml
    pol = policy_from_yaml("rules:\n" + "".join(f"  - {{name: f{i}, kind: forbidden, regex: ['\\\\bterm{i}\\\\w*']}}\n" for i in range(5))
                           + "".join(f"  - {{name: r{i}, kind: required, phrases: ['phrase {i}']}}\n" for i in range(5)))
    texts = [f"An answer of some length mentioning phrase {i % 5} and maybe term{i % 7}s, with more words after it. " * 3 for i in range(n)]
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for t in texts: pol.score(t, "a prompt about something")
        best = max(best, n / (time.perf_counter() - t0))
    return best


def per_step_overhead(task, batch: int = 8, reps: int = 200) -> dict:
    "Seconds of forge_nb-only work per GRPO step: its per-rule reward functions on a batch, and one metrics.jsonl record."
    import tempfile
    from forge_nb.policy import load_policy, reward_functions
    from forge_nb.runs import MetricsLog
    rows = [json.loads(l) for l in open(task["prompts"])][:batch]
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    comps = [[{"role": "assistant", "content": "The Pro plan costs 12 EUR a month [KB-11]. Note that prices may change."}]] * batch
    cols = {"tags": [r["tags"] for r in rows], "context": [r["context"] for r in rows]}
    fns, plain = reward_functions(load_policy(task["policy"])), plain_rewards()
    def timed(f):
        t0 = time.perf_counter()
        for _ in range(reps): f()
        return (time.perf_counter() - t0) / reps
    forge_r = timed(lambda: [f(prompts=prompts, completions=comps, **cols) for f in fns])
    plain_r = timed(lambda: [f(prompts=prompts, completions=comps, **cols) for f in plain])
    rec = {"loss": 0.1, "reward": 2.0, "kl": 0.01, **{f"rewards/r{i}/mean": 0.5 for i in range(4)}, "completions/mean_length": 20.0}
    log = MetricsLog(Path(tempfile.mkdtemp()) / "metrics.jsonl", "rl")
    metrics = timed(lambda: log.log(step=1, **rec))
    return {"forge_rewards_s": forge_r, "plain_rewards_s": plain_r, "metrics_record_s": metrics}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3); ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", default="/tmp/bench-rl")
    ap.add_argument("--quick", action="store_true", help="one round of 5 steps, a 15-step base model")
    a = ap.parse_args(argv)
    if a.quick: a.rounds, a.steps = 1, 5
    import torch
    torch.set_num_threads(1)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    res = {"scoring_completions_per_s_10_regex_rules_1_core": round(scoring_throughput())}
    print(f"policy scoring: {res['scoring_completions_per_s_10_regex_rules_1_core']:,} completions/s (10 regex rules, one core)", flush=True)
    from forge_nb.demo import demo_task
    from forge_nb.trl_stage import tiny_chat_model
    task = demo_task(out / "task", n_chat=400, n_prompts=64, n_heldout=8)
    res["per_step_overhead"] = ov = per_step_overhead(task)
    print(f"forge_nb-only work per step: rewards {ov['forge_rewards_s'] * 1e3:.3f} ms (hand-written: {ov['plain_rewards_s'] * 1e3:.3f} ms), "
          f"metrics record {ov['metrics_record_s'] * 1e3:.3f} ms", flush=True)
    base = out / "model"
    if not (base / "config.json").exists(): tiny_chat_model(base, task["chat"], steps=15 if a.quick else 30)
    forge, plain = [], []   # (median step s, tokens/s) per round
    for r in range(a.rounds):
        order = [("forge", run_forge), ("plain", run_plain)]
        if r % 2: order.reverse()
        for name, fn in order:
            t, tps = fn(base, task, out / f"{name}", a.steps, seed=r)
            (forge if name == "forge" else plain).append((t, tps))
            print(f"round {r} {name}: {1 / t:.3f} steps/s (median step {t * 1000:.0f} ms), {tps:,.0f} tokens/s", flush=True)
    med = statistics.median
    paired = [p[0] / f[0] for f, p in zip(forge, plain)]            # same round, same machine load
    paired_tok = [f[1] / p[1] for f, p in zip(forge, plain)]
    res.update(forge_steps_per_s=round(1 / med([f[0] for f in forge]), 4), plain_trl_steps_per_s=round(1 / med([p[0] for p in plain]), 4),
               ratio_of_medians=round(med([p[0] for p in plain]) / med([f[0] for f in forge]), 3),
               ratio_median_paired=round(med(paired), 3), tokens_per_s_ratio_median_paired=round(med(paired_tok), 3),
               rounds=a.rounds, steps=a.steps, forge=forge, plain=plain)
    print(json.dumps(res, indent=2))
    print(f"forge_nb / plain TRL GRPO steps/s: {res['ratio_of_medians']:.3f} (ratio of medians), {res['ratio_median_paired']:.3f} "
          f"(median of per-round ratios), tokens/s {res['tokens_per_s_ratio_median_paired']:.3f} (goal >= 0.97)")
    (out / "bench_rl.json").write_text(json.dumps(res, indent=2))
    emit("rl", [figure("GRPO steps/s", res["forge_steps_per_s"], "steps/s", "plain TRL GRPOTrainer, hand-written rewards",
                       res["plain_trl_steps_per_s"], note=f"goal >= 0.97; median per-round {res['ratio_median_paired']:.3f}"),
                figure("forge_nb reward functions per step", ov["forge_rewards_s"] * 1e3, "ms", "hand-written TRL rewards",
                       ov["plain_rewards_s"] * 1e3, better="lower"),
                figure("policy scoring, 10 regex rules, 1 core", res["scoring_completions_per_s_10_regex_rules_1_core"],
                       "completions/s")], quick=a.quick, rounds=a.rounds, steps=a.steps)


if __name__ == "__main__":
    sys.exit(main())
