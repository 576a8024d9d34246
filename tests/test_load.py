"""Issue 14, item 6: the job registry, `forge-nb jobs` and the monitor ask the scheduler in batches. The scheduler calls
are counted by a PATH shim in front of `sacct`/`squeue` (bench/bench_jobs.py), not by the code under test: a refresh
makes at most two calls (one `sacct`, one `squeue` for the jobs accounting has not seen end) whatever the number of jobs.
Latency figures are in the bench (`bench/bench_jobs.py`), not here."""
import subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/"bench"))
from bench_jobs import write_scheduler_shim, fake_runs   # noqa: E402

FORGE = Path(sys.executable).parent/"forge-nb"


def calls(log: Path) -> list:
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("n_runs", [3, 200])
def test_forge_nb_jobs_asks_the_scheduler_at_most_twice(tmp_path, n_runs):
    "`forge-nb jobs` over n runs (a third of the jobs live): every row listed, with its state, from <= 2 scheduler calls."
    ids = fake_runs(tmp_path/"runs", n_runs, [])
    states = {j: ("RUNNING" if k % 3 == 0 else "COMPLETED") for k, j in enumerate(ids)}
    log = tmp_path/"calls.log"
    env = write_scheduler_shim(tmp_path/"shim", log, 0.0, states)
    r = subprocess.run([str(FORGE), "jobs", "--runs-dir", str(tmp_path/"runs")], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {l.split()[3]: l.split()[4] for l in r.stdout.splitlines()[1:]}          # job id -> state, as printed
    assert rows == states, "every job listed with the scheduler's state"
    assert calls(log) == ["sacct", "squeue"], calls(log)                            # not one per job


def test_monitor_refresh_asks_the_scheduler_at_most_twice(tmp_path, monkeypatch):
    "A monitor with 50 SLURM jobs (half of them waiting on another job) refreshes with <= 2 scheduler calls."
    from forge_nb.jobs import Job, read_registry, register_job
    from forge_nb.widgets.monitor import JobMonitor
    ids = fake_runs(tmp_path/"runs", 25, [])
    for k, run in enumerate(sorted((tmp_path/"runs").iterdir())):                   # a dependent job per run
        register_job(run, dict(job_id=str(800_000 + k), name="sft", stage="sft", cluster="slurm", run_dir=str(run),
                               folder=str(run/"logs"), tasks=1, depends_on=[ids[k]], cancelled=False))
    states = {j: "RUNNING" for j in ids} | {str(800_000 + k): "PENDING" for k in range(25)}
    log = tmp_path/"calls.log"
    env = write_scheduler_shim(tmp_path/"shim", log, 0.0, states)
    monkeypatch.setenv("PATH", env["PATH"]); monkeypatch.setenv("FORGE_SHIM_LOG", str(log))
    monkeypatch.setenv("FORGE_SHIM_STATES", env["FORGE_SHIM_STATES"])
    jobs = [Job(r) for run in sorted((tmp_path/"runs").iterdir()) for r in read_registry(run)]
    assert len(jobs) == 50
    mon = JobMonitor(*jobs, follow=False)                                            # the constructor refreshes once
    assert len(calls(log)) <= 2, calls(log)
    log.write_text("")
    mon.refresh()
    assert calls(log) == ["sacct", "squeue"], calls(log)
    shown = {c.job.job_id: c.state for c in mon.cards}
    assert shown == states, "each card shows the scheduler's state"
