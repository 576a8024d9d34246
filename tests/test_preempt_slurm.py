"""Preemption on the REAL local SLURM cluster (`slurm/dev-cluster up`): two pretraining jobs on the `preempt` partition
are displaced mid-run by one job on the higher-priority `cpu` partition. One saves a checkpoint of the step at which it
was signalled and resumes from it; the other is told it has no grace time (`FORGE_PREEMPT_GRACE_S=0`), writes nothing,
says so, and resumes from its last periodic checkpoint. Both finish with every loss equal to an undisturbed run's.

    pytest tests/test_preempt_slurm.py      # about 2 minutes (both jobs run at once)
"""
import os, re, subprocess, sys, time
from pathlib import Path

import pytest

import job_probes
from forge_nb.pipeline import tiny_config
from forge_nb.config import ResourcesConfig, save_config
from forge_nb.runs import RunDir, read_metrics
from forge_nb import launch as L

pytestmark = pytest.mark.slurm

STEPS, SAVE_EVERY, STEP_SLEEP_S = 80, 40, 0.25   # periodic checkpoints at 40 and 80: a signal after 40 lands between them
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
        res = ResourcesConfig(cluster="slurm", partition="preempt", cpus_per_task=4, time_min=10, max_requeues=3,
                              signal_delay_s=30, env={**ENV, **extra})
        jobs[name] = L.submit(job_probes.paced_pretrain, cfg, str(runs[name]), STEP_SLEEP_S, resources=res,
                              run_dir=runs[name], stage="pretrain", name="pretrain")
    t0 = time.time()
    while not all(_last_step(r) >= SAVE_EVERY + 3 for r in runs.values()):   # both past their first periodic checkpoint
        assert time.time() - t0 < 180, {n: (j.why(), _last_step(runs[n])) for n, j in jobs.items()}
        time.sleep(0.25)
    # one job that needs every CPU of both nodes: SLURM displaces both preemptible jobs (USR2, GraceTime 15 s, requeue)
    high = L.submit(job_probes.sleep_probe, 1, resources=ResourcesConfig(cluster="slurm", partition="cpu", nodes=2,
                    cpus_per_task=4, time_min=5), run_dir=tmp_path / "high", name="high")
    assert high.result(timeout_s=180) == 1
    for j in jobs.values():   # a requeued job waits for cred_expire before it may start again: release it now
        assert j.wait_state({"PENDING", "REQUEUED"}, timeout_s=60) in ("PENDING", "REQUEUED"), j.why()
        subprocess.run(["scontrol", "update", f"JobId={j.job_id}", "StartTime=now"], check=True)
    out = {n: j.result(timeout_s=300) for n, j in jobs.items()}
    ref_out, _ = ref_proc.communicate(timeout=300)
    assert ref_proc.returncode == 0, ref_out[-3000:]
    expected = _losses(ref)
    assert [s for s, _ in expected] == list(range(1, STEPS + 1))

    for name, run in runs.items():
        recs = _records(run)
        pre = [r for r in recs if r.get("event") == "preempted"]
        assert len(pre) == 1, (name, pre)
        k = pre[0]["step"]
        assert SAVE_EVERY < k < STEPS, (name, k)                       # signalled between the periodic checkpoints
        log = "\n".join(jobs[name].stdout(tail=None).splitlines())
        resumed = [int(m) for m in re.findall(r"resuming from \S+ \(step (\d+)\)", log)]
        if name == "saves":
            assert pre[0]["checkpoint"] is True and pre[0]["save_s"] is not None and pre[0]["grace_left_s"] > 2, pre
            assert pre[0]["deadline_from"] == "SLURM EndTime", pre
            assert out[name]["resumed_from"] == k, (out[name], k)      # from the signalled step, not the periodic one
            assert f"preempted (SIGUSR2) at step {k}: checkpoint" in log, log[-3000:]
        else:
            assert pre[0]["checkpoint"] is False, pre
            assert out[name]["resumed_from"] == SAVE_EVERY, (out[name], k)   # the previous checkpoint
            assert f"preempted (SIGUSR2) at step {k}: NOT saving" in log and f"step_{SAVE_EVERY:08d}" in log, log[-3000:]
            assert not (run / "pretrain" / "checkpoints" / f"step_{k:08d}").exists()
        assert resumed[-1:] == [out[name]["resumed_from"]], (name, resumed)
        assert not list((run / "pretrain" / "checkpoints").glob(".step_*")), name   # nothing half-written left
        assert _losses(run) == expected, name                             # bitwise the undisturbed run
        assert out[name]["preemptions"] == 1 and out[name]["steps"] == STEPS
        states = _runs(jobs[name].job_id)
        assert states[-1] == "COMPLETED" and any(s in ("PREEMPTED", "REQUEUED") for s in states[:-1]), (name, states)
