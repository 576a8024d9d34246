"""The README's demo, measured: its wall time (`forge-nb demo`, the command `bash scripts/demo.sh` runs after set-up),
each stage's share, and the RL stage's held-out pass rates over several RL seeds, with their spread.

1. `forge-nb demo --runs-dir OUT` (full settings, local jobs): wall time of the whole run and of each stage, from the
   run's own `pipeline.json`; the load average before and after (on a shared machine the figure is the machine's,
   not the code's: quote it with the load).
2. The RL stage again with `--set rl.seed=S --force rl` for each further seed (data, pretraining and SFT are reused):
   the held-out pass rate of all rules before RL (the SFT model) and after, per seed, from `rl/report.json`; then
   min / median / max over the seeds. What moves the figure: the RL seed (which completions are sampled, hence what
   GRPO reinforces), and, with the same seed, the machine (floating-point reductions in another order change a
   sampled token at a near tie, and from there the whole sampled trajectory).

    python bench/bench_demo.py                       # full demo + RL seeds 0,1 (tens of minutes on 2 shared cores)
    python bench/bench_demo.py --seeds 0,1,2,3       # more seeds: a better spread, 3-5 more minutes each
    python bench/bench_demo.py --quick               # tiny settings, seeds 0,1: checks the bench runs (a few minutes)
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path
from benchlib import emit, figure

ROOT = Path(__file__).resolve().parents[1]


def forge() -> str:
    v = ROOT/".venv"/"bin"/"forge-nb"
    return str(v) if v.exists() else "forge-nb"


def run_demo(runs: Path, size: str, *extra: str) -> float:
    "One `forge-nb demo` (its output streamed here); seconds."
    t0 = time.perf_counter()
    cmd = [forge(), "demo", "--runs-dir", str(runs), *(["--size", "tiny"] if size == "tiny" else []), *extra]
    print("$", " ".join(cmd[1:]), flush=True)
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if r.returncode != 0: raise SystemExit(f"forge-nb demo failed (exit {r.returncode})")
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default=None, help="RL seeds, comma-separated (default 0,1); the first is the demo's own run")
    ap.add_argument("--quick", action="store_true", help="tiny settings (`--size tiny`): checks the bench, not the figures")
    ap.add_argument("--runs-dir", default=None, help="where the demo runs (default: a temporary folder, removed after); a "
                    "finished demo there is reused, and the wall time is then the reuse's")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in (a.seeds or "0,1").split(",") if s.strip()]
    size = "tiny" if a.quick else "full"
    runs = Path(a.runs_dir) if a.runs_dir else Path(tempfile.mkdtemp(prefix="bench-demo-"))
    name = "demo-tiny" if a.quick else "demo"
    load0 = os.getloadavg()[0]
    wall = run_demo(runs, size, *(["--set", f"rl.seed={seeds[0]}"] if seeds[0] != 0 else []))
    load1 = os.getloadavg()[0]
    pipe = json.loads((runs/name/"pipeline.json").read_text())
    stages = {k: float(v["seconds"]) for k, v in pipe["stages"].items()}
    per_seed = []
    for i, s in enumerate(seeds):
        if i: run_demo(runs, size, "--set", f"rl.seed={s}", "--force", "rl")
        rep = json.loads((runs/name/"rl"/"report.json").read_text())
        per_seed.append({"seed": s, "before": rep["pass_rate"]["before"], "after": rep["pass_rate"]["after"],
                         "rules": {n: {w: v[w]["pass_rate"] for w in ("before", "after")} for n, v in rep["rules"].items()},
                         "chat_loss": rep.get("heldout_chat_loss") or {},
                         "rl_s": json.loads((runs/name/"pipeline.json").read_text())["stages"]["rl"]["seconds"]})
    total = sum(stages.values())
    print(f"\ndemo ({size}): {pipe['wall_s']:.0f} s by its pipeline.json ({wall:.0f} s with start-up), peak {pipe.get('peak_rss_gb')} GB; "
          f"load average {load0:.1f} before, {load1:.1f} after, {os.cpu_count()} cores")
    print("  " + ", ".join(f"{k} {v:.0f} s ({100 * v / total:.0f}%)" for k, v in stages.items()))
    print("\nRL held-out pass rate, all rules (before RL = the SFT model, the same for every seed; after RL):")
    for p in per_seed: print(f"  seed {p['seed']}: {100 * p['before']:.1f}% -> {100 * p['after']:.1f}%   "
                             + ", ".join(f"{n} {100 * r['before']:.0f}->{100 * r['after']:.0f}%" for n, r in p["rules"].items())
                             + (f"; held-out chat loss {p['chat_loss']['before']:.2f}->{p['chat_loss']['after']:.2f}"
                                if p["chat_loss"].get("after") is not None else ""))
    after = [p["after"] for p in per_seed]
    print(f"  over {len(seeds)} seeds: after RL min {100 * min(after):.1f}%, median {100 * statistics.median(after):.1f}%, "
          f"max {100 * max(after):.1f}% (spread {100 * (max(after) - min(after)):.1f} points)")
    figs = [figure(f"demo wall time ({size}, load {load0:.1f})", round(float(pipe["wall_s"]), 1), "s", better="lower",
                   note=", ".join(f"{k} {100 * v / total:.0f}%" for k, v in stages.items())),
            figure("RL all rules, before RL (SFT model)", round(100 * per_seed[0]["before"], 1), "%")]
    figs += [figure(f"RL all rules after RL, seed {p['seed']}", round(100 * p["after"], 1), "%", "before RL (SFT model)",
                    round(100 * p["before"], 1)) for p in per_seed]
    figs += [figure(f"RL all rules after RL, {k} over {len(seeds)} seeds", round(100 * f(after), 1), "%") for k, f in
             (("min", min), ("median", statistics.median), ("max", max))]
    res = {"size": size, "wall_s": pipe["wall_s"], "stages": stages, "peak_rss_gb": pipe.get("peak_rss_gb"), "load": [load0, load1],
           "seeds": per_seed}
    if a.json: Path(a.json).write_text(json.dumps(res, indent=2))
    if not a.runs_dir: shutil.rmtree(runs, ignore_errors=True)
    emit("demo", figs, quick=a.quick, **res)


if __name__ == "__main__":
    sys.exit(main())
