"""Does RL on a policy work? On the demo support task (forge_nb.demo.demo_task), on this machine's CPU:

1. a small chat model: tokenizer + tiny Llama + a short SFT on partly compliant answers (`tiny_chat_model`);
2. GRPO for a few minutes on the four-rule policy -> each rule's pass rate on HELD-OUT prompts before/after;
3. DPO on pairs built from the same policy (k samples per prompt, best vs worst) -> the same report;
4. a reward model on those pairs -> its accuracy on held-out pairs (built the same way from held-out prompts).

    python bench/measure_rl.py --out /tmp/rl-measure [--grpo-steps 150] [--dpo-steps 100] [--rm-steps 100]

Prints the reports and writes `<out>/results.json`.
"""
import argparse, json, sys, time
from pathlib import Path

from forge_nb.config import PipelineConfig
from forge_nb.demo import demo_task
from forge_nb.trl_stage import tiny_chat_model
from forge_nb.rl import run_rl, format_report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/rl-measure")
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--grpo-steps", type=int, default=150)
    ap.add_argument("--dpo-steps", type=int, default=100)
    ap.add_argument("--rm-steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--only", default="grpo,dpo,reward")
    a = ap.parse_args(argv)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    res = {}
    task = demo_task(out/"task", n_chat=2000, n_prompts=256, n_heldout=64)
    base = out/"sft"
    t0 = time.time()
    if not (base/"config.json").exists(): tiny_chat_model(base, task["chat"], steps=a.sft_steps, log=lambda *x: print(*x, flush=True))
    res["sft_s"] = round(time.time() - t0, 1)
    common = dict(base_model=str(base), policy=task["policy"], prompts=task["prompts"], heldout_prompts=task["heldout"],
                  heldout_chat=task["heldout_chat"],
                  max_completion_length=48, report_samples=4, save_every=50, temperature=1.0)
    only = a.only.split(",")
    if "grpo" in only:
        cfg = PipelineConfig(name="grpo", runs_dir=str(out), stages=["rl"],
                             rl=dict(method="grpo", steps=a.grpo_steps, lr=a.lr, batch_size=16, num_generations=8, beta=0.02, **common))
        t0 = time.time(); s = run_rl(cfg, out/"grpo", log=lambda *x: print(*x, flush=True))
        res["grpo"] = {"train_s": round(time.time() - t0, 1), "steps": s["steps"], "report": s["report"]}
    if "dpo" in only:
        cfg = PipelineConfig(name="dpo", runs_dir=str(out), stages=["rl"],
                             rl=dict(method="dpo", steps=a.dpo_steps, lr=a.lr, batch_size=8, beta=0.1, pair_samples=4, pair_margin=0.5, **common))
        t0 = time.time(); s = run_rl(cfg, out/"dpo", log=lambda *x: print(*x, flush=True))
        res["dpo"] = {"train_s": round(time.time() - t0, 1), "steps": s["steps"], "pairs": s["pairs"], "report": s["report"]}
    if "reward" in only:
        pairs_src = out/"dpo"/"rl"/"pairs.jsonl"
        cfg = PipelineConfig(name="rm", runs_dir=str(out), stages=["rl"],
                             rl=dict(method="reward", steps=a.rm_steps, lr=1e-4, batch_size=8, pair_samples=4, pair_margin=0.5,
                                     **({"pairs": str(pairs_src)} if pairs_src.exists() else {}), **common))
        t0 = time.time(); s = run_rl(cfg, out/"rm", log=lambda *x: print(*x, flush=True))
        res["reward"] = {"train_s": round(time.time() - t0, 1), "steps": s["steps"], "train_pairs": s["pairs"],
                         "heldout_pairs": s["report"]["heldout_pairs"], "heldout_accuracy": s["report"]["accuracy"]}
    (out/"results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    for k in ("grpo", "dpo"):
        rep = out/k/"rl"/"report.json"
        if rep.exists(): print(f"\n== {k}\n" + format_report(json.loads(rep.read_text())))


if __name__ == "__main__":
    sys.exit(main())
