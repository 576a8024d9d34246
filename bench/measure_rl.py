"""Does RL on a policy work? On the demo support task (forge_nb.demo.demo_task), on this machine's CPU:

1. a small chat model: tokenizer + tiny Llama + a short SFT on partly compliant answers (`tiny_chat_model`);
2. GRPO for a few minutes on the four-rule policy -> each rule's pass rate on HELD-OUT prompts before/after;
3. DPO on pairs built from the same policy (k samples per prompt, best vs worst) -> the same report;
4. a reward model on those pairs -> its accuracy on held-out pairs (built the same way from held-out prompts).

    python bench/measure_rl.py --out /tmp/rl-measure [--grpo-steps 150] [--dpo-steps 100] [--rm-steps 100] [--seeds 0,1]
    python bench/measure_rl.py --quick       # a few steps of each: checks the bench runs (what `bench/run --quick` runs)

Prints the reports, writes `<out>/results.json` and, last, the result line `bench/run` reads: the all-rules pass
rate before/after GRPO and DPO and the reward model's held-out accuracy, per RL seed (`--seeds`: the SFT model is
trained once; each seed reruns GRPO, DPO and the reward model), with min and max over the seeds.
"""
import argparse, json, sys, time
from pathlib import Path
from benchlib import emit, figure

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
    ap.add_argument("--seeds", default="0", help="RL seeds, comma-separated: each reruns the RL methods on the same SFT model")
    ap.add_argument("--quick", action="store_true", help="a small task and a few steps of each method: checks the bench, not the figures")
    a = ap.parse_args(argv)
    if a.quick: a.sft_steps, a.grpo_steps, a.dpo_steps, a.rm_steps = 20, 2, 2, 2
    seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    runs = [run_seed(a, Path(a.out)/(f"seed{s}" if len(seeds) > 1 else ""), s, Path(a.out)) for s in seeds]
    figs = []
    for k in ("grpo", "dpo"):
        if all(k in r for r in runs):
            for s, r in zip(seeds, runs):
                pr = r[k]["report"]["pass_rate"]
                figs.append(figure(f"{k.upper()} all rules after RL, seed {s}", round(100 * pr["after"], 1), "%", "before RL (SFT model)",
                                   round(100 * pr["before"], 1)))
                figs.append(figure(f"{k.upper()} training time ({r[k]['steps']} steps), seed {s}", r[k]["train_s"], "s", better="lower"))
            after = [100 * r[k]["report"]["pass_rate"]["after"] for r in runs]
            if len(runs) > 1: figs += [figure(f"{k.upper()} all rules after RL, {n} over {len(runs)} seeds", round(f(after), 1), "%")
                                       for n, f in (("min", min), ("max", max))]
    if all("reward" in r for r in runs):
        figs += [figure(f"reward model held-out pair accuracy, seed {s}", round(100 * r["reward"]["heldout_accuracy"], 1), "%")
                 for s, r in zip(seeds, runs)]
    emit("rl quality", figs, quick=a.quick, seeds=seeds)


def run_seed(a, out: Path, seed: int, task_dir: Path) -> dict:
    "GRPO, DPO and a reward model with RL seed `seed` on the one SFT model (trained once, under `task_dir`)."
    out.mkdir(parents=True, exist_ok=True)
    res = {"seed": seed}
    task = (demo_task(task_dir/"task", n_chat=300, n_prompts=32, n_heldout=8) if a.quick else
            demo_task(task_dir/"task", n_chat=2000, n_prompts=256, n_heldout=64))
    base = task_dir/"sft"
    t0 = time.time()
    if not (base/"config.json").exists(): tiny_chat_model(base, task["chat"], steps=a.sft_steps, log=lambda *x: print(*x, flush=True))
    res["sft_s"] = round(time.time() - t0, 1)
    common = dict(base_model=str(base), policy=task["policy"], prompts=task["prompts"], heldout_prompts=task["heldout"],
                  heldout_chat=task["heldout_chat"],
                  max_completion_length=16 if a.quick else 48, report_samples=1 if a.quick else 4, save_every=50,
                  temperature=1.0, seed=seed)
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
        if rep.exists(): print(f"\n== {k} (seed {seed})\n" + format_report(json.loads(rep.read_text())))
    return res


if __name__ == "__main__":
    sys.exit(main())
