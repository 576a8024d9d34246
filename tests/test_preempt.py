"""Preemption without a scheduler: two DDP ranks (gloo) of the real pretraining stage, and `SIGUSR2` sent to rank 1
only, mid-run. Both ranks must agree to stop at the same step boundary, write one checkpoint of that step together,
record the preemption, and end with `Preempted` (no submitit handler to requeue them here). Started again, the run
resumes from that step and its losses equal an undisturbed 2-rank run's, bitwise. (The SLURM version, with
submitit's requeue and the grace-time fallback, is tests/test_preempt_slurm.py.)

    pytest tests/test_preempt.py      # about a minute
"""
import json, os, signal, socket, subprocess, sys, time
from pathlib import Path

import pytest

from forge_nb.runs import save_config
from forge_nb.runs import RunDir, read_metrics
from forge_nb.demo import tiny_config

DRIVER = """
import sys
from forge_nb.config import load_config
from forge_nb.pretrain import run_pretrain
run_pretrain(load_config(sys.argv[1]), sys.argv[2], log=print)
"""
STEPS = 30


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    from forge_nb.data.store import run_data_stage
    d = tmp_path_factory.mktemp("store")
    run_data_stage(tiny_config(d), d / "t", log=lambda *a: None)
    return d / "t" / "data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _start_ranks(cfg, run: Path) -> list:
    "Two ranks of run_pretrain, each a fresh one-thread process (like srun's tasks)."
    save_config(cfg, run / "cfg.yaml")
    port = str(_free_port())
    return [subprocess.Popen([sys.executable, "-c", DRIVER, str(run / "cfg.yaml"), str(run)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "RANK": str(r),
                                  "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                                  "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for r in range(2)]


def _wait(procs, timeout=300) -> list:
    return [p.communicate(timeout=timeout)[0] for p in procs]


def _run_dir(tmp: Path, name: str, store: Path) -> Path:
    run = tmp / name; run.mkdir()
    (run / "data").symlink_to(store, target_is_directory=True)
    return run


def _losses(run: Path) -> list:
    return [(r["step"], r["loss"]) for r in read_metrics(RunDir(run).stage("pretrain").metrics_path) if "loss" in r]


def test_signal_to_one_rank_stops_all_at_one_step_with_a_checkpoint(tmp_path, store_dir):
    cfg = tiny_config(tmp_path, steps=STEPS, save_every=10, eval_every=STEPS, keep_last=10,
                               micro_batch_size=2, parallel="ddp")
    ref = _run_dir(tmp_path, "ref", store_dir)
    outs = _wait(_start_ranks(cfg, ref))
    expected = _losses(ref)
    assert [s for s, _ in expected] == list(range(1, STEPS + 1)), outs[0][-2000:]

    run = _run_dir(tmp_path, "run", store_dir)
    procs = _start_ranks(cfg, run)
    t0 = time.time()
    while max([s for s, _ in _losses(run)], default=0) < 12:
        assert procs[0].poll() is None and time.time() - t0 < 240, "the run ended or stalled before the signal"
        time.sleep(0.01)
    os.kill(procs[1].pid, signal.SIGUSR2)              # rank 1 only: rank 0 learns it at the next step boundary
    outs = _wait(procs)
    assert all(p.returncode != 0 for p in procs), outs
    assert all("pretrain: preempted" in o for o in outs), [o[-1500:] for o in outs]     # Preempted, on both ranks
    recs = [r for r in read_metrics(RunDir(run).stage("pretrain").metrics_path) if r.get("event") == "preempted"]
    assert len(recs) == 1 and recs[0]["checkpoint"] is True, recs                       # rank 0 records, once
    k = recs[0]["step"]
    assert 12 <= k < STEPS
    stage = RunDir(run).stage("pretrain")
    assert stage.latest_checkpoint().name == f"step_{k:08d}"
    assert json.loads((stage.latest_checkpoint() / "trainer_state.json").read_text())["world_size"] == 2
    assert f"preempted (SIGUSR2) at step {k}: checkpoint" in outs[0]

    outs = _wait(_start_ranks(cfg, run))
    summary = json.loads((stage.root / "summary.json").read_text())
    assert summary["resumed_from"] == k and summary["preemptions"] == 1, summary
    assert _losses(run) == expected, "losses after the preemption differ from the undisturbed run"
    print(f"rank 1 signalled; both ranks stopped after step {k} with a checkpoint; resumed: {STEPS} losses bitwise equal")
