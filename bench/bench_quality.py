"""Lower loss per wall-clock hour, and per step? AdamW against Muon (+ AdamW for embeddings, norms and head) on the
demo config, on this machine: prints held-out bits per byte per domain for each, and the ratio Muon / AdamW (below 1:
Muon is better), twice:

- **per second** (equal wall-clock): each optimizer trains for the same `--minutes`; the faster step takes more steps.
  This is the figure that decides the default optimizer on a machine: it counts what a step costs here.
- **per step** (equal steps): each trains exactly `--steps` optimizer steps (step-count cosine schedule). This is the
  figure papers quote; it ignores how long a step takes, so it holds on every machine and decides nothing alone.

    .venv/bin/python bench/bench_quality.py                       # 4 min per optimizer + 300 steps each (both at once)
    .venv/bin/python bench/bench_quality.py --quick               # 30 s and 60 steps each: a smoke test of the bench itself
    .venv/bin/python bench/bench_quality.py --minutes 8 --steps 600 --json out.json --muon-lr 0.02

How it is fair:
- Same data (the demo config's token store, built once: `forge_nb.demo.demo_config`), same model and
  initialisation (the config's seed), same batches in the same order, same warmup and cosine shape, same
  per-domain validation (every held-out sequence of every source, `forge_nb.pretrain.evaluate`).
- Both optimizers train in two processes started together, one CPU thread each, so whatever else loads the machine
  loads both alike. Per second: the schedule is a function of elapsed *time* (warmup for the first `--warmup`
  fraction, then cosine to `min_lr_ratio` at the deadline), so each run ends its schedule exactly at the budget.
  Validation is after the deadline, untimed.
- The step is forge_nb's own (`build_state`, `train_step`: the optimizer `make_optimizer` builds from `optim.name`,
  with Muon's Newton–Schulz precision chosen for this machine: `forge_nb.pretrain.ns_precision`, printed).
"""
import argparse, json, math, os, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT/"bench"))
from benchlib import emit, figure  # noqa: E402


def bench_config(work: Path, a):
    "The demo config (data + pretrain), its optimizer settings from the command line."
    from forge_nb.config import override
    from forge_nb.demo import demo_config
    cfg = demo_config(str(work), name="quality")
    return override(cfg, "stages=[data, pretrain]", f"pretrain.steps={a.budget_steps}", f"pretrain.micro_batch_size={a.batch}",
                    f"pretrain.optim.muon_lr={a.muon_lr}", *([f"pretrain.optim.lr={a.lr}"] if a.lr else []))


def time_multiplier(frac: float, warmup: float, lo: float) -> float:
    "The lr multiplier at `frac` of the wall-clock budget: linear warmup, then cosine down to `lo`."
    if frac < warmup: return max(frac / warmup, 1e-3)
    t = min(1.0, (frac - warmup) / max(1e-9, 1 - warmup))
    return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))


def worker(a):
    "Train one optimizer for `--seconds` of wall-clock (or exactly `--worker-steps` steps), then validate; print one JSON line."
    import torch
    torch.set_num_threads(1)
    from forge_nb.data.store import TokenStore
    from forge_nb.distributed import DistEnv
    from forge_nb.pretrain import make_runtime, build_state, train_step, step_loss, check_batch
    cfg = bench_config(Path(a.work), a)
    cfg = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"optim": cfg.pretrain.optim.model_copy(update={"name": a.worker})})})
    store = TokenStore(Path(a.work)/"quality"/"data")
    env = DistEnv()
    rt = make_runtime(cfg.pretrain, env)
    torch.use_deterministic_algorithms(True, warn_only=True)
    state = build_state(cfg, store, rt, env)
    opt, oc = state.optimizer, cfg.pretrain.optim
    if a.worker_steps:                      # equal steps: the ordinary step-count schedule over exactly that many steps
        from forge_nb.pretrain import make_scheduler
        for g in opt.param_groups: g["lr"] = g["initial_lr"]
        state.scheduler = make_scheduler(opt, oc.model_copy(update={"warmup_steps": max(1, round(a.warmup * a.worker_steps))}), a.worker_steps)
        t0 = time.perf_counter()
        while state.step < a.worker_steps: train_step(state, [check_batch(next(state.loader), store.vocab_size)], rt)
        return _result(a, state, store, rt, time.perf_counter() - t0, [])
    base = [g["initial_lr"] for g in opt.param_groups]

    class TimeSchedule:                     # replaces the step-count scheduler: lr from elapsed wall-clock time
        def step(self):
            m = time_multiplier((time.perf_counter() - t0) / a.seconds, a.warmup, oc.min_lr_ratio)
            for g, b in zip(opt.param_groups, base): g["lr"] = b * m
    state.scheduler = TimeSchedule()
    for g, b in zip(opt.param_groups, base): g["lr"] = b * time_multiplier(0.0, a.warmup, oc.min_lr_ratio)
    losses, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < a.seconds:
        out = train_step(state, [check_batch(next(state.loader), store.vocab_size)], rt)
        if state.step % 10 == 0: losses.append((state.step, round(time.perf_counter() - t0, 1), step_loss(out)))
    return _result(a, state, store, rt, time.perf_counter() - t0, losses)


def _result(a, state, store, rt, train_s, losses):
    "Validate (untimed) and print the worker's one RESULT line."
    from forge_nb.pretrain import evaluate
    ev = evaluate(state.model, store, rt, micro_batch_size=a.batch, max_batches=None)
    print("RESULT " + json.dumps({"optimizer": a.worker, "steps": state.step, "train_s": round(train_s, 1),
                                  "tokens": state.step * a.batch * store.seq_len, "losses": losses,
                                  "precision": rt.precision, "bpb": {s: ev[f"val/{s}/bpb"] for s in store.val_sources}}), flush=True)


def race(args: list, env: dict) -> dict:
    "Run the AdamW and Muon workers at the same time; their RESULTs."
    procs = {o: subprocess.Popen(args + ["--worker", o], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for o in ("adamw", "muon")}
    res = {}
    for o, p in procs.items():
        out, err = p.communicate()
        line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
        if p.returncode or line is None: sys.exit(f"{o} worker failed ({p.returncode}):\n{err[-3000:]}")
        res[o] = json.loads(line[7:])
    return res


def mean_bpb(r: dict) -> float: return sum(r["bpb"].values()) / len(r["bpb"])


def print_table(title: str, res: dict, lr: float, muon_lr: float):
    print(f"\n{title}\n")
    print(f"| | AdamW (lr {lr:g}) | Muon (muon_lr {muon_lr:g}) | Muon / AdamW |")
    print("|---|---|---|---|")
    for k, f in (("steps", "{:d}"), ("train_s", "{:.0f} s")):
        print(f"| {k} | {f.format(res['adamw'][k])} | {f.format(res['muon'][k])} | {res['muon'][k] / res['adamw'][k]:.3f} |")
    print(f"| steps/s | {res['adamw']['steps'] / res['adamw']['train_s']:.2f} | {res['muon']['steps'] / res['muon']['train_s']:.2f} | "
          f"{(res['muon']['steps'] / res['muon']['train_s']) / (res['adamw']['steps'] / res['adamw']['train_s']):.3f} |")
    for s in res["adamw"]["bpb"]:
        x, y = res["adamw"]["bpb"][s], res["muon"]["bpb"][s]
        print(f"| val bpb {s} | {x:.4f} | {y:.4f} | {y / x:.4f} |")
    mx, my = mean_bpb(res["adamw"]), mean_bpb(res["muon"])
    print(f"| val bpb mean | {mx:.4f} | {my:.4f} | {my / mx:.4f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=4.0, help="wall-clock training budget of each optimizer")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of each optimizer for the per-step comparison")
    ap.add_argument("--quick", action="store_true", help="30 s and 60 steps each: checks the bench runs, not which optimizer wins")
    ap.add_argument("--batch", type=int, default=32, help="sequences per step (the demo's micro_batch_size)")
    ap.add_argument("--lr", type=float, default=None, help="AdamW peak lr (default: the demo's)")
    ap.add_argument("--muon-lr", type=float, default=0.02, help="Muon peak lr for the hidden matrices")
    ap.add_argument("--warmup", type=float, default=0.1, help="warmup as a fraction of the budget")
    ap.add_argument("--work", type=str, default=None, help="folder for the demo corpus and token store (default: a temporary one)")
    ap.add_argument("--json", type=str, default=None, help="write the results here too")
    ap.add_argument("--worker", choices=["adamw", "muon"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-steps", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data-steps", dest="budget_steps", type=int, default=500,
                    help="size the token store for this many steps (a run that takes more repeats data, both alike)")
    a = ap.parse_args()
    if a.worker: return worker(a)
    seconds, steps = (30.0, 60) if a.quick else (a.minutes * 60, a.steps)
    tmp = None if a.work else tempfile.TemporaryDirectory()
    work = Path(a.work or tmp.name); work.mkdir(parents=True, exist_ok=True)
    from forge_nb.data.store import run_data_stage
    t = time.time()
    run_data_stage(bench_config(work, a), work/"quality", log=lambda *x: None)
    print(f"token store ready in {time.time() - t:.0f} s ({work/'quality'/'data'}); training AdamW and Muon for "
          f"{seconds:.0f} s each, then {steps} steps each, each pair at the same time, one thread each", flush=True)
    import torch
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = [sys.executable, __file__, "--work", str(work), "--batch", str(a.batch),
            "--muon-lr", str(a.muon_lr), "--warmup", str(a.warmup)] + (["--lr", str(a.lr)] if a.lr else [])
    per_s = race(args + ["--seconds", str(seconds)], env)
    per_step = race(args + ["--worker-steps", str(steps)], env)
    load, cap = os.getloadavg(), torch.backends.cpu.get_cpu_capability()
    lr = bench_config(work, a).pretrain.optim.lr
    p = per_s["muon"]["precision"]
    print(f"\nCPU capability {cap}, one thread per optimizer; Muon's Newton–Schulz in {p['muon_newton_schulz']} ({p['muon_reason']})")
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print_table(f"Per second: {seconds:.0f} s of training each, at the same time", per_s, lr, a.muon_lr)
    print_table(f"Per step: {steps} steps each", per_step, lr, a.muon_lr)
    rs, rp = mean_bpb(per_s["muon"]) / mean_bpb(per_s["adamw"]), mean_bpb(per_step["muon"]) / mean_bpb(per_step["adamw"])
    few = min(per_s["adamw"]["steps"], per_s["muon"]["steps"]) < 50
    win = "neither (under 50 steps each: too few for a verdict)" if few else "neither clearly" if abs(rs - 1) < 0.01 else "Muon" if rs < 1 else "AdamW"
    print(f"\nMuon / AdamW mean val bpb: per second {rs:.4f}, per step {rp:.4f} (below 1: Muon better); "
          f"on this machine ({cap}) {win} wins per second; a Muon step took {per_step['muon']['train_s'] / per_step['adamw']['train_s']:.3f}× "
          f"an AdamW step (the per-step run's seconds)")
    emit("quality", [figure(f"Muon val bpb, equal wall-clock ({seconds:.0f} s, CPU {cap})", mean_bpb(per_s["muon"]), "bits/byte",
                            "AdamW, same wall-clock", mean_bpb(per_s["adamw"]), better="lower",
                            note=f"steps Muon/AdamW {per_s['muon']['steps'] / per_s['adamw']['steps']:.3f}"),
                     figure(f"Muon val bpb, equal steps ({steps})", mean_bpb(per_step["muon"]), "bits/byte",
                            "AdamW, same steps", mean_bpb(per_step["adamw"]), better="lower",
                            note=f"seconds Muon/AdamW {per_step['muon']['train_s'] / per_step['adamw']['train_s']:.3f}")],
         quick=a.quick, cpu_capability=cap, per_second_winner=win)
    if a.json: Path(a.json).write_text(json.dumps({"seconds": seconds, "steps": steps, "load": load, "cpu_capability": cap,
                                                   "per_second": per_s, "per_step": per_step}, indent=1))
    if tmp: tmp.cleanup()

if __name__ == "__main__":
    main()
