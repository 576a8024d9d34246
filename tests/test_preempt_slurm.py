"""Preemption on the REAL local SLURM cluster (`slurm/dev-cluster up`): two pretraining jobs on the `preempt` partition
are displaced mid-run by one job on the higher-priority `cpu` partition. One saves a checkpoint of the step at which it
was signalled and resumes from it; the other is told it has no grace time (`FORGE_PREEMPT_GRACE_S=0`), writes nothing,
says so, and resumes from its last periodic checkpoint. Both finish with every loss equal to an undisturbed run's.

The cluster is shared (other people's jobs queue, hold nodes, and may preempt these jobs too), so nothing here waits a
fixed time or assumes a node is free: each job holds after step HOLD_AFTER until it is preempted (`job_probes.
paced_pretrain`), so the displacement lands between its checkpoints however long the scheduler takes; every wait is
on state the test can see (metrics, job states, sacct), with deadlines far beyond the normal case; and a preemption
by someone else's job is allowed for, each one checked like ours.

    pytest tests/test_preempt_slurm.py      # about a minute when the nodes are free (both jobs run at once)
"""
import os, re, subprocess, sys, time
from pathlib import Path

import pytest

import job_probes
from forge_nb.demo import tiny_config
from forge_nb.config import ResourcesConfig
from forge_nb.runs import save_config
from forge_nb.jobs import FAILED_STATES
from forge_nb.runs import RunDir, read_metrics
from forge_nb import launch as L

pytestmark = pytest.mark.slurm

STEPS, SAVE_EVERY = 80, 40                 # periodic checkpoints at 40 and 80
HOLD_AFTER = SAVE_EVERY + 3                # each job waits to be preempted after this step: between the checkpoints
STEP_SLEEP_S = 0.05                        # pacing only for the log's sake: the hold, not the pace, times the preemption
WAIT_S = 900                               # a deadline for anything the queue decides (normal case: seconds)
ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
DRIVER = """
import sys
from forge_nb.config import load_config
from forge_nb.pretrain import run_pretrain
run_pretrain(load_config(sys.argv[1]), sys.argv[2], log=lambda *a, **k: None)
"""


def _config(d: Path):
    return tiny_config(d, steps=STEPS, save_every=SAVE_EVERY, eval_every=STEPS, keep_last=5, micro_batch_size=2)


def _run_dir(tmp: Path, name: str, data: Path) -> Path:
    run = tmp / name; run.mkdir()
    (run / "data").symlink_to(data, target_is_directory=True)
    return run


def _records(run: Path) -> list:
    return read_metrics(RunDir(run).stage("pretrain").metrics_path)


def _losses(run: Path) -> list:
    return [(r["step"], r["loss"]) for r in _records(run) if "loss" in r]


def _last_step(run: Path) -> int:
    return max([s for s, _ in _losses(run)], default=0)


def _runs(job_id) -> list:
    "sacct's states of every run of a job (requeued runs included)."
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-D", "-j", str(job_id), "-o", "State"], capture_output=True, text=True).stdout
    return [l.split()[0] for l in out.splitlines() if l.strip()]


def _wait(what: str, ok, jobs: dict, timeout: float = WAIT_S, poll: float = 0.5):
    "Wait until `ok()`; fail at once if a job failed, and after `timeout` with every job's state and reason."
    t0 = time.time()
    while not ok():
        bad = {n: j.why() for n, j in jobs.items() if j.state() in FAILED_STATES - {"PREEMPTED"}}   # requeued, not ended
        assert not bad, f"{what}: a job failed: {bad}"
        assert time.time() - t0 < timeout, f"{what}: not after {timeout:.0f} s: {({n: j.why() for n, j in jobs.items()})}"
        time.sleep(poll)


def _release(job, timeout: float = 120):
    """A requeued job may start again only after cred_expire (30 s here): ask SLURM to start it now while it waits.
    Only saves time: a job that already runs, or ended, needs nothing, and one left waiting starts by itself."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        st = job.state()
        if st not in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "PREEMPTED", "UNKNOWN"): return st
        if st == "PENDING" and subprocess.run(["scontrol", "update", f"JobId={job.job_id}", "StartTime=now"],
                                              capture_output=True).returncode == 0: return st
        time.sleep(0.5)
    return job.state()


def test_preempted_pretrain_saves_at_signal_and_resumes_exactly(slurm_cluster, tmp_path):
    from forge_nb.data.store import run_data_stage
    cfg = _config(tmp_path)
    run_data_stage(cfg, tmp_path / "base", log=lambda *a: None)
    data = tmp_path / "base" / "data"
    # the undisturbed reference, in a plain process with the jobs' environment (one thread: bitwise comparable)
    ref = _run_dir(tmp_path, "ref", data)
    save_config(cfg, ref / "cfg.yaml")
    ref_proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(ref / "cfg.yaml"), str(ref)], env={**os.environ, **ENV},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    jobs, runs = {}, {}
    for name, extra in [("saves", {}), ("no_grace", {"FORGE_PREEMPT_GRACE_S": "0"})]:
        runs[name] = _run_dir(tmp_path, name, data)
        # time_min leaves the hold (and a queue) far from the time limit, whose own USR2 would look like a preemption
        res = ResourcesConfig(cluster="slurm", partition="preempt", cpus_per_task=4, time_min=30, max_requeues=3,
                              signal_delay_s=30, env={**ENV, **extra})
        jobs[name] = L.submit(job_probes.paced_pretrain, cfg, str(runs[name]), STEP_SLEEP_S, HOLD_AFTER, WAIT_S, resources=res,
                              run_dir=runs[name], stage="pretrain", name="pretrain")
    # both past their first periodic checkpoint (each then holds until preempted; another's node may free up late)
    _wait(f"both jobs at step {HOLD_AFTER}", lambda: all(_last_step(r) >= HOLD_AFTER for r in runs.values()), jobs)
    # one job that needs every CPU of both nodes: SLURM displaces both preemptible jobs (USR2, GraceTime 15 s, requeue)
    high = L.submit(job_probes.sleep_probe, 1, resources=ResourcesConfig(cluster="slurm", partition="cpu", nodes=2,
                    cpus_per_task=4, time_min=5), run_dir=tmp_path / "high", name="high")
    assert high.result(timeout_s=WAIT_S) == 1
    for j in jobs.values(): _release(j)
    out = {n: j.result(timeout_s=WAIT_S) for n, j in jobs.items()}
    ref_out, _ = ref_proc.communicate(timeout=WAIT_S)
    assert ref_proc.returncode == 0, ref_out[-3000:]
    expected = _losses(ref)
    assert [s for s, _ in expected] == list(range(1, STEPS + 1))

    for name, run in runs.items():
        recs = _records(run)
        pre = [r for r in recs if r.get("event") == "preempted"]
        # ours lands in the hold, between the checkpoints; any other was someone else's job (allowed, and checked alike)
        assert any(HOLD_AFTER < r["step"] < STEPS for r in pre), (name, pre)
        log = "\n".join(jobs[name].stdout(tail=None).splitlines())
        resumed = [int(m) for m in re.findall(r"resuming from \S+ \(step (\d+)\)", log)]
        for p in pre:
            k = p["step"]
            if name == "saves":
                assert p["checkpoint"] is True and p["save_s"] is not None and p["grace_left_s"] > 2, p
                assert p["deadline_from"] == "SLURM EndTime", p
                assert f"preempted (SIGUSR2) at step {k}: checkpoint" in log, log[-3000:]
            else:
                assert p["checkpoint"] is False, p
                assert f"preempted (SIGUSR2) at step {k}: NOT saving" in log, log[-3000:]
                if k % SAVE_EVERY: assert not (run / "pretrain" / "checkpoints" / f"step_{k:08d}").exists(), (name, k)
        k = pre[-1]["step"]                                                # the last run resumed from the last preemption:
        want = (k if name == "saves" else k // SAVE_EVERY * SAVE_EVERY) or None   # its signalled step, or the periodic checkpoint
        assert out[name]["resumed_from"] == want, (name, out[name], pre)
        if name == "no_grace": assert f"step_{SAVE_EVERY:08d}" in log, log[-3000:]
        assert resumed[-1:] == [out[name]["resumed_from"]], (name, resumed)
        assert not list((run / "pretrain" / "checkpoints").glob(".step_*")), name   # nothing half-written left
        assert _losses(run) == expected, name                             # bitwise the undisturbed run
        assert out[name]["preemptions"] == len(pre) and out[name]["steps"] == STEPS, (name, out[name], pre)
        # sacct: every run of the job, the last COMPLETED (accounting can lag the result file: wait for it)
        _wait(f"sacct to record {name}'s job COMPLETED", lambda: _runs(jobs[name].job_id)[-1:] == ["COMPLETED"], {}, timeout=120)
        states = _runs(jobs[name].job_id)
        assert sum(s in ("PREEMPTED", "REQUEUED") for s in states[:-1]) >= 1, (name, states)
