"""Submit-to-running latency of the launcher: N trivial jobs, one after the other, on the local SLURM cluster
(`slurm/dev-cluster up`) and with the local executor.

    .venv/bin/python bench/bench_launch.py            # 10 submissions each; writes bench/out/bench_launch.json
    .venv/bin/python bench/bench_launch.py -n 20 --partition gpu

Three figures per SLURM job, medians over the N submissions:
- `to_running_s`: from the `submit()` call until `squeue` reports the job RUNNING (polled every 20 ms);
- `to_user_code_s`: from the `submit()` call until the submitted function's first line runs (python start-up and
  submitit's unpickling included): what a user waits for;
- `slurm_start_minus_submit_s`: SLURM's own view (sacct Start - Submit, 1 s resolution).
`submit_call_s` is how long `submit()` itself blocks (validation with scontrol + sbatch + registry).

Same-run baselines: for the local executor, a bare `subprocess` start of the same Python that prints the time (what
any launcher pays); for SLURM, a bare `sbatch --wrap` of the same Python on the same partition, submit until its first
line runs. `--quick`: 3 submissions each.
"""
import argparse, datetime, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path
from benchlib import emit, figure

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def started_at() -> float:
    "The job's first line: when user code began."
    return time.time()


def squeue_state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def sacct_times(job_id: str) -> tuple:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "Submit,Start"], capture_output=True, text=True).stdout
    sub, start = out.strip().splitlines()[-1].split("|")
    f = lambda s: datetime.datetime.fromisoformat(s).timestamp()
    return f(start) - f(sub)


def bench_slurm(n: int, partition: str, run_dir: Path) -> dict:
    from forge_nb.config import ResourcesConfig
    from forge_nb.launch import submit
    res = ResourcesConfig(cluster="slurm", partition=partition, time_min=5)
    rows = []
    for i in range(n):
        t0 = time.time()
        job = submit(started_at, resources=res, run_dir=run_dir, name=f"lat{i}")
        t_sub = time.time()
        while (st := squeue_state(job.job_id)) not in ("RUNNING", "COMPLETING", ""):
            time.sleep(0.02)
        t_run = time.time()
        t_code = job.result(timeout_s=120)
        rows.append(dict(job_id=job.job_id, submit_call_s=t_sub - t0, to_running_s=t_run - t0, to_user_code_s=t_code - t0))
    time.sleep(2)   # let accounting catch up
    for r in rows: r["slurm_start_minus_submit_s"] = sacct_times(r["job_id"])
    return rows


def bench_local(n: int, run_dir: Path) -> list:
    from forge_nb.launch import submit
    rows = []
    for i in range(n):
        t0 = time.time()
        job = submit(started_at, run_dir=run_dir, name=f"lat{i}")
        t_sub = time.time()
        t_code = job.result(timeout_s=120)
        rows.append(dict(job_id=job.job_id, submit_call_s=t_sub - t0, to_user_code_s=t_code - t0))
    return rows


def bench_bare_local(n: int) -> list:
    "Baseline: start the same Python and run one line, no launcher."
    rows = []
    for _ in range(n):
        t0 = time.time()
        t = float(subprocess.run([sys.executable, "-c", "import time; print(time.time())"], capture_output=True, text=True).stdout)
        rows.append(dict(to_user_code_s=t - t0))
    return rows


def bench_bare_slurm(n: int, partition: str) -> list:
    "Baseline: `sbatch --wrap` of the same Python line on the same partition, polled until its output file exists."
    rows, d = [], Path(tempfile.mkdtemp(prefix="bench-launch-", dir=OUT))
    for i in range(n):
        out = d / f"bare{i}.out"
        t0 = time.time()
        subprocess.run(["sbatch", "-p", partition, "-t", "5", "-o", str(out), "--wrap",
                        f"{sys.executable} -c 'import time; print(time.time())'"], check=True, capture_output=True)
        deadline = t0 + 120
        while time.time() < deadline:
            txt = out.read_text().strip() if out.exists() else ""
            if txt: break
            time.sleep(0.02)
        if txt: rows.append(dict(to_user_code_s=float(txt) - t0))   # a job still queued after 120 s is left out
    return rows


def med(rows, key): return round(statistics.median(r[key] for r in rows), 3) if rows else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10, help="submissions per executor")
    ap.add_argument("--partition", default="cpu")
    ap.add_argument("--quick", action="store_true", help="3 submissions per executor")
    args = ap.parse_args(argv)
    if args.quick: args.n = 3
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = {"n": args.n, "partition": args.partition, "when": stamp}
    local = bench_local(args.n, OUT / "runs" / f"bench-launch-local-{stamp}")
    report["local"] = {k: med(local, k) for k in ("submit_call_s", "to_user_code_s")} | {"jobs": local}
    report["local_bare"] = {"to_user_code_s": med(bench_bare_local(args.n), "to_user_code_s")}
    print(f"local executor: median submit() {report['local']['submit_call_s']} s, "
          f"submit → user code {report['local']['to_user_code_s']} s (n={args.n}); bare subprocess {report['local_bare']['to_user_code_s']} s")
    figs = [figure("local submit -> user code", report["local"]["to_user_code_s"], "s", "bare subprocess of the same Python",
                   report["local_bare"]["to_user_code_s"], better="lower")]
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0:
        sl = bench_slurm(args.n, args.partition, OUT / "runs" / f"bench-launch-slurm-{stamp}")
        keys = ("submit_call_s", "to_running_s", "to_user_code_s", "slurm_start_minus_submit_s")
        report["slurm"] = {k: med(sl, k) for k in keys} | {"jobs": sl}
        print(f"SLURM ({args.partition}): median submit() {report['slurm']['submit_call_s']} s, "
              f"submit → RUNNING {report['slurm']['to_running_s']} s, submit → user code {report['slurm']['to_user_code_s']} s, "
              f"sacct Start-Submit {report['slurm']['slurm_start_minus_submit_s']} s (n={args.n})")
        report["slurm_bare"] = {"to_user_code_s": med(bench_bare_slurm(args.n, args.partition), "to_user_code_s")}
        print(f"bare sbatch --wrap ({args.partition}): submit → user code {report['slurm_bare']['to_user_code_s']} s")
        figs.append(figure(f"SLURM ({args.partition}) submit -> user code", report["slurm"]["to_user_code_s"], "s",
                           "bare sbatch --wrap, same partition", report["slurm_bare"]["to_user_code_s"], better="lower"))
    else:
        print("SLURM cluster not up (slurm/dev-cluster up): SLURM figures skipped", file=sys.stderr)
    (OUT / "bench_launch.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {OUT / 'bench_launch.json'}")
    emit("launch", figs, quick=args.quick, n=args.n)


if __name__ == "__main__":
    main()
