"""`forge-nb jobs` under load: latency with 200 run directories and 50 live jobs against a 1-run baseline, and the
scheduler calls each refresh makes (counted by a PATH shim in front of `sacct`/`squeue`, not by the code under test).

    .venv/bin/python bench/bench_jobs.py                       # SLURM jobs if the local cluster answers, else a fake scheduler
    .venv/bin/python bench/bench_jobs.py --scheduler fake --latency-ms 40
    .venv/bin/python bench/bench_jobs.py --compare /path/to/older/checkout   # the same figures for another forge_nb

With the local cluster up (`--scheduler slurm`), the 50 live jobs are real: `sleep` jobs submitted with sbatch, held
until an hour from now (`--begin=now+1hour`: PENDING in the scheduler, so the shared cluster's CPUs stay free), cancelled
in a `finally`. The other runs' jobs are ids the scheduler does not know (ended long ago). With `--scheduler fake`, a
shim answers `sacct`/`squeue` itself after `--latency-ms` (a slurmdbd round trip): the call count is the same, the
latency is the model's; the 50 live jobs are then real sleep jobs on this machine (submitit's local executor, detached
as the launcher runs them; `--live fake` has the fake scheduler answer for them instead), killed in a `finally`.
"process s": a fresh `forge-nb jobs` (Python start and imports included); "refresh s": `list_jobs` in a warm process."""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHIM = r'''#!/bin/sh
# forge_nb bench/test shim: log the call, then run the real command (FORGE_SHIM_REAL) or answer like it after a delay
name=$(basename "$0")
echo "$name" >> "$FORGE_SHIM_LOG"
if [ -n "$FORGE_SHIM_REAL" ]; then exec "$FORGE_SHIM_REAL/$name" "$@"; fi
sleep "${FORGE_SHIM_LATENCY_S:-0}"
ids=""
while [ $# -gt 0 ]; do [ "$1" = "-j" ] && ids="$2"; shift; done
echo "$ids" | tr ',' '\n' | awk -v name="$name" -v sf="$FORGE_SHIM_STATES" '
  BEGIN { if (sf != "") while ((getline l < sf) > 0) { split(l, a, " "); st[a[1]] = a[2] } }
  $1 != "" { s = ($1 in st) ? st[$1] : "RUNNING"
             if (name == "sacct") print $1 "|" s "|None|0:0|node1|00:01:00|2026-01-01T00:00:00"; else print $1 "|" s "|None|node1" }'
'''


def write_scheduler_shim(folder: Path, log: Path, latency_s: float = 0.0, states: dict | None = None,
                         real: str | None = None) -> dict:
    "Fake (or counting, with `real` = the folder of the real commands) `sacct`/`squeue` in `folder`; returns the environment that puts them first on PATH."
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("sacct", "squeue"):
        p = folder/name; p.write_text(SHIM); p.chmod(0o755)
    env = dict(os.environ, PATH=f"{folder}:{os.environ['PATH']}", FORGE_SHIM_LOG=str(log), FORGE_SHIM_LATENCY_S=str(latency_s))
    if states is not None:
        (folder/"states.txt").write_text("".join(f"{k} {v}\n" for k, v in states.items())); env["FORGE_SHIM_STATES"] = str(folder/"states.txt")
    if real: env["FORGE_SHIM_REAL"] = real
    return env


def fake_runs(runs_dir: Path, n_runs: int, job_ids: list, start_id: int = 900_000, live_cluster: str = "slurm") -> list:
    "`n_runs` run directories, each with a `jobs.json` of one SLURM job; the first `len(job_ids)` get those ids (jobs of `live_cluster`)."
    ids = []
    for i in range(n_runs):
        run = runs_dir/f"run{i:03d}"; (run/"logs").mkdir(parents=True, exist_ok=True)
        jid = str(job_ids[i]) if i < len(job_ids) else str(start_id + i)
        rec = dict(job_id=jid, name="pretrain", stage="pretrain", cluster=live_cluster if i < len(job_ids) else "slurm",
                   run_dir=str(run), folder=str(run/"logs"), tasks=1, depends_on=[], submitted="2026-01-01T00:00:00", cancelled=False)
        (run/"jobs.json").write_text(json.dumps({"jobs": [rec]}))
        ids.append(jid)
    return ids


def forge_jobs(runs_dir: Path, env: dict, python: str, pythonpath: str | None = None) -> tuple:
    "(seconds, stdout) of one `forge-nb jobs` in a fresh process."
    env = dict(env, **({"PYTHONPATH": pythonpath} if pythonpath else {}))
    t0 = time.perf_counter()
    r = subprocess.run([python, "-c", "import sys; from forge_nb.cli import main; sys.exit(main(sys.argv[1:]))",
                        "jobs", "--runs-dir", str(runs_dir)], capture_output=True, text=True, env=env, timeout=600, cwd=runs_dir)
    dt = time.perf_counter() - t0
    if r.returncode: raise RuntimeError(r.stderr[-2000:])
    return dt, r.stdout


REFRESH = r"""
import json, sys, time
from forge_nb.jobs import list_jobs
log, runs, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
list_jobs(runs)                                   # warm-up: imports, file cache
out = []
for _ in range(n):
    open(log, "w").close(); t0 = time.perf_counter()
    rows = list_jobs(runs)
    out.append([time.perf_counter() - t0, len(open(log).read().splitlines())])
print(json.dumps(out))
"""

def measure(runs_dir: Path, env: dict, log: Path, repeat: int, python: str, pythonpath: str | None = None) -> dict:
    "Median latency of `forge-nb jobs` (a fresh process each time), of a refresh in a warm process (`list_jobs`, what the registry and a monitor pay), and the scheduler calls per refresh (recounted from the shim's log)."
    times, calls = [], []
    for _ in range(repeat):
        log.write_text("")
        dt, out = forge_jobs(runs_dir, env, python, pythonpath)
        times.append(dt); calls.append(len(log.read_text().splitlines()))
    r = subprocess.run([python, "-c", REFRESH, str(log), str(runs_dir), str(repeat)], capture_output=True, text=True, timeout=600,
                       cwd=runs_dir, env=dict(env, **({"PYTHONPATH": pythonpath} if pythonpath else {})))
    if r.returncode: raise RuntimeError(r.stderr[-2000:])
    warm = json.loads(r.stdout.splitlines()[-1])
    return dict(median_s=statistics.median(times), min_s=min(times), calls=sorted(set(calls) | {c for _, c in warm}),
                warm_s=statistics.median(t for t, _ in warm), rows=len(out.splitlines()) - 1)


def slurm_up() -> bool:
    try: return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except Exception: return False


def submit_sleepers(n: int, partition: str) -> list:
    "`n` real sleep jobs, PENDING until an hour from now."
    ids = []
    for _ in range(n):
        r = subprocess.run(["sbatch", "--parsable", f"--partition={partition}", "--begin=now+1hour", "--job-name=forge-bench-jobs",
                            "--output=/dev/null", "--wrap", "sleep 600"], capture_output=True, text=True, timeout=60)
        if r.returncode: raise RuntimeError(r.stderr)
        ids.append(r.stdout.strip().split(";")[0])
    return ids


def submit_local_sleepers(n: int, folder: Path) -> list:
    "`n` real sleep jobs on this machine (submitit's local executor, detached as forge_nb's launcher runs them): their pids."
    import time as _t
    from forge_nb.launch import detached_local_executor
    ex = detached_local_executor(folder); ex.update_parameters(timeout_min=10)
    return [ex.submit(_t.sleep, 600).job_id for _ in range(n)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200); ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--scheduler", choices=["auto", "slurm", "fake"], default="auto")
    ap.add_argument("--latency-ms", type=float, default=40.0, help="fake scheduler: seconds per call (a slurmdbd round trip)")
    ap.add_argument("--partition", default="cpu")
    ap.add_argument("--live", choices=["local", "fake"], default="local",
                    help="without a SLURM cluster: the live jobs are real local sleep jobs, or answered by the fake scheduler")
    ap.add_argument("--compare", default=None, help="another checkout whose forge_nb to measure the same way (PYTHONPATH)")
    a = ap.parse_args(argv)
    sched = ("slurm" if slurm_up() else "fake") if a.scheduler == "auto" else a.scheduler
    python = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    live = []
    try:
        where = "slurm" if sched == "slurm" else a.live
        if where == "slurm": live = submit_sleepers(a.jobs, a.partition)
        elif where == "local": live = submit_local_sleepers(a.jobs, tmp/"sleepers")
        else: live = [str(500_000 + i) for i in range(a.jobs)]
        states = None if sched == "slurm" else {**{j: "PENDING" for j in live}}
        base_dir, big_dir = tmp/"one", tmp/"many"
        cl = "local" if where == "local" else "slurm"
        if where == "local":      # each run's logs folder is the sleepers' folder, so the records find their jobs
            for d in (big_dir/f"run{i:03d}" for i in range(len(live))): d.mkdir(parents=True); (d/"logs").symlink_to(tmp/"sleepers")
        if where == "local":      # the baseline is one run with one SLURM job, asked of the scheduler like the 200 runs' jobs
            fake_runs(base_dir, 1, [])
            states[str(900_000)] = "RUNNING"
        else: fake_runs(base_dir, 1, live[:1], live_cluster=cl)
        ended = fake_runs(big_dir, a.runs, live, live_cluster=cl)[len(live):]
        if states is not None: states.update({j: "COMPLETED" for j in ended})
        if states is not None and where == "local": states[ended[0]] = "RUNNING"   # one SLURM job live too: sacct and squeue both asked
        log = tmp/"calls.log"
        real = str(Path(shutil.which("sacct")).parent) if sched == "slurm" else None
        env = write_scheduler_shim(tmp/"shim", log, a.latency_ms / 1000, states, real)
        print(f"scheduler: {sched}" + (f" (fake, {a.latency_ms:g} ms per call)" if sched == "fake" else "") +
              f"; {len(live)} live jobs: " + {"slurm": "real SLURM sleep jobs (PENDING)", "local": "real sleep jobs on this machine (submitit, detached)",
                                             "fake": "answered RUNNING/PENDING by the fake scheduler"}[where])
        print(f"{'forge_nb':<10}{'runs':>6}{'live':>6}{'process s':>11}{'min s':>8}{'refresh s':>11}{'calls/refresh':>15}{'rows':>6}")
        for label, pp in [("this", str(ROOT))] + ([("compare", a.compare)] if a.compare else []):
            one = measure(base_dir, env, log, a.repeat, python, pp)
            many = measure(big_dir, env, log, a.repeat, python, pp)
            for n, r in ((1, one), (a.runs, many)):
                print(f"{label:<10}{n:>6}{(1 if n == 1 else len(live) + (where == 'local')):>6}{r['median_s']:>11.3f}{r['min_s']:>8.3f}{r['warm_s']:>11.3f}{str(r['calls']):>15}{r['rows']:>6}")
            print(f"{label}: median latency ratio {a.runs} runs / 1 run: fresh process {many['median_s'] / one['median_s']:.2f}, "
                  f"refresh in a warm process {many['warm_s'] / one['warm_s']:.2f}")
    finally:
        if sched == "slurm" and live: subprocess.run(["scancel", *live], capture_output=True, timeout=60)
        elif live and a.live == "local":
            from forge_nb.jobs import _kill_tree
            for pid in live: _kill_tree(int(pid), grace_s=0.5)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
