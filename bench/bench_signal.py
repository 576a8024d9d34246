"""How fast is a policy with nothing to learn refused, against training it anyway? (forge_nb.rl_signal)

On the demo support task (forge_nb.demo.demo_task) with a small chat model trained here (`tiny_chat_model`):

1. the demo policy: the learning-signal check's figures (each rule's pass rate, groups with reward spread);
2. a policy no completion of the model meets (a `required` phrase nobody writes): the RL stage with the check on,
   timed from `run_rl` to the `NoLearningSignal` refusal (model load + sampling + scoring), in this process;
3. the same-run baseline: the same policy with `rl.signal_check: false`, trained for `--steps` GRPO steps (what the
   stage did before: every step `frac_reward_zero_std` 1 and nothing learned), timed the same way.

    python bench/bench_signal.py [--steps 16] [--sft-steps 60]
    python bench/bench_signal.py --quick      # 4 steps, 20 SFT steps: checks the bench runs

Prints the figures, then the FORGE_BENCH line (refusal seconds, baseline seconds, ratio).
"""
import argparse, json, sys, tempfile, time
from pathlib import Path
from benchlib import emit, figure

import torch
from forge_nb.config import PipelineConfig
from forge_nb.demo import demo_task
from forge_nb.trl_stage import tiny_chat_model
from forge_nb.rl import run_rl
from forge_nb.rl_signal import NoLearningSignal, format_signal
from forge_nb.runs import read_metrics

IMPOSSIBLE = """\
name: impossible
rules:
  - {name: affidavit, kind: required, phrases: ["per the enclosed notarised affidavit"]}
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=16, help="GRPO steps of the baseline (the budget the check saves)")
    ap.add_argument("--sft-steps", type=int, default=60)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick: a.steps, a.sft_steps = 4, 20
    d = Path(tempfile.mkdtemp(prefix="bench-signal-"))
    task = demo_task(d/"task", n_chat=300, n_prompts=64, n_heldout=8)
    base = tiny_chat_model(d/"sft", task["chat"], steps=a.sft_steps)
    pol = d/"impossible.yaml"; pol.write_text(IMPOSSIBLE)
    common = dict(base_model=str(base), prompts=task["prompts"], steps=a.steps, lr=1e-4, batch_size=8, num_generations=4,
                  max_completion_length=32, beta=0.0, save_every=a.steps)
    cfg = lambda name, **rl: PipelineConfig(name=name, runs_dir=str(d), stages=["rl"], rl={**common, **rl})
    quiet = lambda *x, **k: None

    # 1. the demo policy's check (then 1 step, so the stage's own path is what is measured)
    printed = []
    run_rl(cfg("demo", policy=task["policy"], steps=1, save_every=1), d/"demo", log=printed.append)
    demo = json.loads((d/"demo"/"rl"/"signal_check.json").read_text())
    print("demo policy, start model:\n" + format_signal(demo) + f"\n  (check: {demo['seconds']} s)\n")

    # 2. the impossible policy, refused
    t0 = time.perf_counter()
    try:
        run_rl(cfg("refused", policy=str(pol)), d/"refused", log=quiet); refused = None
    except NoLearningSignal as e: refused = e
    refuse_s = time.perf_counter() - t0
    assert refused is not None, "the impossible policy was not refused"
    ck = list((d/"refused"/"rl"/"checkpoints").iterdir())
    assert not ck and not [r for r in read_metrics(d/"refused"/"rl"/"metrics.jsonl") if "event" not in r], "it trained"
    print(f"impossible policy: refused in {refuse_s:.1f} s, no step trained:\n  forge-nb: error: {refused}\n")

    # 3. the baseline: the same policy trained anyway
    t0 = time.perf_counter()
    run_rl(cfg("trained", policy=str(pol), signal_check=False), d/"trained", log=quiet)
    train_s = time.perf_counter() - t0
    steps = [r for r in read_metrics(d/"trained"/"rl"/"metrics.jsonl") if "reward" in r]
    zero = sum(r["frac_reward_zero_std"] == 1.0 for r in steps)
    warned = [r for r in read_metrics(d/"trained"/"rl"/"metrics.jsonl") if r.get("event") == "warning"]
    print(f"the same policy trained anyway (rl.signal_check: false): {len(steps)} steps in {train_s:.1f} s, "
          f"frac_reward_zero_std = 1 on {zero} of them, max |loss| {max(abs(r['loss']) for r in steps):.2g}; "
          f"warnings: {[(w['step'], w['kind']) for w in warned]}")
    print(f"refusal / training {a.steps} steps: {refuse_s / train_s:.2f} (cpu capability {torch.backends.cpu.get_cpu_capability()})")
    emit("rl signal", [figure("refusal of a policy with no reward spread", refuse_s, "s", f"training it {a.steps} GRPO steps anyway",
                              train_s, better="lower"),
                       figure("demo policy: groups with reward spread", demo["spread_share"], "share", note=f"{demo['prompts']} prompts"),
                       figure("demo policy signal check", demo["seconds"], "s", better="lower")], quick=a.quick)


if __name__ == "__main__":
    sys.exit(main())
