"""The launcher against the REAL local SLURM cluster (`slurm/dev-cluster up`): no mocks. Fake GPUs via GRES (character
devices with /dev/null's numbers: what is tested is the scheduling of GPUs, not CUDA), a 2-node ×
2-task gloo/DDP job, preemption → requeue → resume, dependent pipelines whose middle stage fails, reattaching from a
fresh process, invalid requests that submit nothing, and secrets that never reach a file."""
import hashlib, json, os, subprocess, sys, time
from pathlib import Path

import pytest

import job_probes
from forge_nb.demo import tiny_config
from forge_nb.config import PipelineConfig, ResourcesConfig
from forge_nb import launch as L

pytestmark = pytest.mark.slurm


def slurm(**kw) -> ResourcesConfig:
    kw.setdefault("time_min", 10)
    return ResourcesConfig(cluster="slurm", **kw)


def sacct(job_id, dup=False) -> list:
    "sacct's (JobID, State, Reason) rows of a job (all its requeued runs with dup=True)."
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", str(job_id), "-o", "JobIDRaw,State,Reason"] + (["-D"] if dup else []),
                         capture_output=True, text=True, check=True).stdout
    return [l.split("|") for l in out.splitlines() if l.strip()]


def sacct_final(job_id, timeout_s: float = 90) -> list:
    """sacct's rows of a job once accounting shows it ended. Accounting trails the controller (the job's results can be
    read while sacct still says RUNNING, by minutes on a loaded slurmdbd): wait for it, then let the caller assert."""
    deadline = time.time() + timeout_s
    while True:
        rows = sacct(job_id)
        if (rows and rows[0][1].split()[0] in L.TERMINAL_STATES) or time.time() > deadline: return rows
        time.sleep(0.5)


def jobs_named(name: str) -> tuple:
    "(jobs in squeue, jobs in sacct since midnight) with this job name (the cluster is shared: count only ours)."
    sq = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True, check=True).stdout.split()
    sa = subprocess.run(["sacct", "-X", "-n", "-a", "-S", "00:00", "--name", name, "-o", "JobIDRaw"],
                        capture_output=True, text=True, check=True).stdout.split()
    return len(sq), len(sa)


def test_cluster_partitions(slurm_cluster):
    parts = {p["name"]: p for p in L.cluster_partitions()}
    assert {"cpu", "gpu", "preempt"} <= set(parts)
    assert parts["gpu"]["gpus_per_node"] >= 2 and parts["cpu"]["default"]
    assert parts["preempt"]["priority_tier"] < parts["cpu"]["priority_tier"]


def test_devnull_fake_gpus_are_allocated_by_gres(slurm_cluster, tmp_path):
    """A job asking for 2 GPUs per node on the `gpu` partition gets 2 of the dev cluster's fake GPUs (/dev/null-like
    device files, no CUDA): SLURM's allocation and the job's environment, not a GPU computation."""
    job = L.submit(job_probes.env_probe, resources=slurm(partition="gpu", gpus_per_node=2), run_dir=tmp_path / "gpu")
    out = job.result(timeout_s=120)
    assert sacct_final(job.job_id)[0][1] == "COMPLETED"
    assert out["SLURM_GPUS_ON_NODE"] == "2" and out["SLURM_JOB_PARTITION"] == "gpu"
    assert "--gpus-per-node=2" in (job.folder / f"{job.job_id}_submission.sh").read_text()


def test_two_nodes_two_tasks_ddp(slurm_cluster, tmp_path):
    job = L.submit(job_probes.ddp_probe, 4, resources=slurm(partition="cpu", nodes=2, tasks_per_node=2),
                   run_dir=tmp_path / "ddp")
    res = [job.result(timeout_s=180, task=k) for k in range(4)]
    assert [r["rank"] for r in res] == [0, 1, 2, 3] and all(r["world_size"] == 4 for r in res)
    assert all(r["allreduce"] == 10.0 for r in res)                          # 1+2+3+4 on every rank
    params = [p for r in res for p in r["params"]]
    assert all(p == params[0] for p in params)                               # every rank's copy, as seen by every rank
    assert {h.split(":")[1] for h in res[0]["hosts"]} == {"node1", "node2"}  # the ranks really ran on two nodes
    assert sacct_final(job.job_id)[0][1] == "COMPLETED"


def test_preempted_job_requeues_and_resumes(slurm_cluster, tmp_path):
    n = 40
    ref = job_probes.count_steps(str(tmp_path / "ref"), n)
    low = L.submit(job_probes.count_steps, str(tmp_path / "count"), n, 0.25, run_dir=tmp_path / "low",
                   resources=slurm(partition="preempt", cpus_per_task=4, signal_delay_s=30, max_requeues=3), name="low")
    state = tmp_path / "count/state.json"
    t0 = time.time()
    while not (state.exists() and json.loads(state.read_text())["step"] >= 8):
        assert time.time() - t0 < 90, f"the low-priority job did not start: {low.why()}"
        time.sleep(0.25)
    # a high-priority job that needs every CPU of both nodes: SLURM must preempt (requeue) the low one
    high = L.submit(job_probes.sleep_probe, 2, run_dir=tmp_path / "high",
                    resources=slurm(partition="cpu", nodes=2, cpus_per_task=4), name="high")
    assert high.result(timeout_s=120) == 2
    # SLURM holds a requeued job for cred_expire (120 s by default) before it may start again; release it now
    assert low.wait_state({"PENDING", "REQUEUED"}, timeout_s=30) in ("PENDING", "REQUEUED")
    subprocess.run(["scontrol", "update", f"JobId={low.job_id}", "StartTime=now"], check=True)
    out = low.result(timeout_s=180)
    assert out["x"] == ref["x"] and out["steps"] == n                         # same answer as uninterrupted
    assert len(out["starts"]) >= 2 and out["starts"][0] == 0 and out["starts"][1] >= 8   # resumed, not restarted
    sacct_final(low.job_id)                                                   # accounting has the present run's end
    runs = sacct(low.job_id, dup=True)
    assert runs[-1][1] == "COMPLETED" and any(r[1] in ("PREEMPTED", "REQUEUED") for r in runs[:-1]), runs


def test_dependent_pipeline_runs_in_order(slurm_cluster, tmp_path):
    jobs = []
    for name in ["data", "pretrain", "sft"]:
        jobs.append(L.submit(job_probes.write_marker, str(tmp_path / f"m/{name}"), name, resources=slurm(),
                             run_dir=tmp_path / "p", name=name, depends_on=jobs[-1:]))
    assert [j.result(timeout_s=120) for j in jobs] == ["data", "pretrain", "sft"]
    t = [float((tmp_path / f"m/{n}").read_text().split()[1]) for n in ["data", "pretrain", "sft"]]
    assert t == sorted(t)
    assert f"--dependency=afterok:{jobs[0].job_id}" in (jobs[1].folder / f"{jobs[1].job_id}_submission.sh").read_text()


def test_dependent_pipeline_middle_failure(slurm_cluster, tmp_path):
    a = L.submit(job_probes.write_marker, str(tmp_path / "m/a"), "a", resources=slurm(), run_dir=tmp_path / "p", name="data")
    b = L.submit(job_probes.fail_probe, "loss is NaN", resources=slurm(), run_dir=tmp_path / "p", name="pretrain", depends_on=[a])
    c = L.submit(job_probes.write_marker, str(tmp_path / "m/c"), "c", resources=slurm(), run_dir=tmp_path / "p", name="sft", depends_on=[b])
    assert b.wait(timeout_s=120) == "FAILED"
    assert c.wait(timeout_s=60) == "CANCELLED"
    assert not (tmp_path / "m/c").exists()
    assert sacct_final(c.job_id)[0][1].startswith("CANCELLED")
    why = L.attach(tmp_path / "p", "sft").why()
    assert "DependencyNeverSatisfied" in why and "pretrain" in why and "FAILED" in why and "never started" in why, why
    with pytest.raises(RuntimeError, match="loss is NaN"):
        b.result()


def test_launch_pipeline_real_stages_middle_failure(slurm_cluster, tmp_path):
    "launch_pipeline itself on SLURM: the data stage of a config without sources fails; pretrain never starts."
    cfg = PipelineConfig(name="nosrc", runs_dir=str(tmp_path), stages=["data", "pretrain"], resources=slurm())
    data, pre = L.launch_pipeline(cfg)
    assert data.wait(timeout_s=120) == "FAILED"
    assert pre.wait(timeout_s=60) == "CANCELLED" and "never started" in pre.why()
    assert [r["stage"] for r in L.read_registry(tmp_path / "nosrc")] == ["data", "pretrain"]
    with pytest.raises(RuntimeError, match="no sources configured"):
        data.result()


def test_fresh_process_reattaches_and_cancels(slurm_cluster, tmp_path):
    job = L.submit(job_probes.sleep_probe, 300, resources=slurm(), run_dir=tmp_path / "runs/long", name="pretrain")
    job.wait_state("RUNNING", timeout_s=60)
    code = ("from forge_nb.launch import attach\n"
            "j = attach('long', 'pretrain', runs_dir=%r)\n"
            "print('STATE', j.state()); j.cancel(); print('AFTER', j.wait(timeout_s=60, poll_s=0.5))\n") % str(tmp_path / "runs")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "STATE RUNNING" in p.stdout and "AFTER CANCELLED" in p.stdout, p.stdout
    assert sacct_final(job.job_id)[0][1].startswith("CANCELLED")


@pytest.mark.parametrize("kw,expect", [
    (dict(partition="nosuch"), "unknown partition 'nosuch'"),
    (dict(partition="gpu", gpus_per_node=5), "5 GPUs per node asked"),
    (dict(partition="cpu", nodes=3), "3 nodes asked"),
    (dict(partition="preempt", time_min=24 * 60), "allows at most"),
])
def test_invalid_requests_submit_nothing(slurm_cluster, tmp_path, kw, expect, bad_input):
    run = f"bad{os.getpid()}{time.time_ns()}"
    with pytest.raises(L.ResourceError) as e:
        L.submit(job_probes.sleep_probe, 1, resources=slurm(**kw), run_dir=tmp_path / run, name="probe")
    assert len(e.value.errors) == 1 and expect in e.value.errors[0], e.value.errors
    bad_input("cluster", "a request the local SLURM cluster cannot hold: " + ", ".join(f"{k}={v}" for k, v in kw.items()), e,
              names=["resources.", expect, "nothing was submitted"])
    assert jobs_named(f"{run}-probe") == (0, 0)
    assert not (tmp_path / run).exists()
    # the same request made valid is accepted and reaches the queue under that name (so the check above can fail)
    ok = L.submit(job_probes.sleep_probe, 0, resources=slurm(partition="cpu"), run_dir=tmp_path / run, name="probe")
    assert ok.result(timeout_s=120) == 0
    t0 = time.time()
    while jobs_named(f"{run}-probe")[1] != 1 and time.time() - t0 < 20: time.sleep(0.5)   # accounting lags a little
    assert jobs_named(f"{run}-probe")[1] == 1


def test_secrets_never_reach_files(slurm_cluster, tmp_path, monkeypatch):
    secret = "hf_slurm_secret_9f8e7d6c5b4a"
    monkeypatch.setenv("HF_TOKEN", secret)
    cfg = PipelineConfig(name="sec", runs_dir=str(tmp_path), resources=slurm(env={"FORGE_PLAIN": "yes"}))
    run = L.RunDir.for_config(cfg).create(); run.save_config(cfg)
    job = L.launch_fn(job_probes.env_probe, "HF_TOKEN", cfg=cfg, name="probe")
    assert job.result(timeout_s=120)["secret_sha"] == hashlib.sha256(secret.encode()).hexdigest()
    files = [f for f in (tmp_path / "sec").rglob("*") if f.is_file()]
    assert any(f.name.endswith("_submission.sh") for f in files) and any(f.name.endswith("_log.out") for f in files)
    assert (tmp_path / "sec/config.yaml").exists()
    assert [str(f) for f in files if secret.encode() in f.read_bytes()] == []


def test_site_profile_local(slurm_cluster, tmp_path):
    "`profile: local` (slurm/profiles/local.yaml) alone is a complete request for the dev cluster (its GPUs: /dev/null-like fakes)."
    res = L.resolve_resources(ResourcesConfig(profile="local"))
    assert res.cluster == "slurm" and L.validate_resources(res) == []
    out = L.submit(job_probes.env_probe, resources=res, run_dir=tmp_path / "prof").result(timeout_s=120)
    assert out["SLURM_JOB_PARTITION"] == res.partition and out["SLURM_GPUS_ON_NODE"] == str(res.gpus_per_node)


def _tiny_pretrain_config(d: Path, **pretrain) -> PipelineConfig:
    "The tiny pipeline of test_pretrain, 8 steps of micro-batch 2, on the SLURM `cpu` partition."
    cfg = tiny_config(d, **{"steps": 8, "micro_batch_size": 2, "eval_every": 8, "save_every": 8, **pretrain})
    cfg.resources = slurm(partition="cpu", env={"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    return cfg


@pytest.mark.slow
def test_pretrain_stage_two_nodes_matches_one_process(slurm_cluster, tmp_path):
    "The real data and pretrain stages through launch(): 2 nodes × 2 tasks (ddp, fsdp) = one process with the same global batch."
    from forge_nb.runs import read_metrics
    base = _tiny_pretrain_config(tmp_path)
    data = L.launch(base, "data", run_dir=tmp_path / "base")
    data.result(timeout_s=300)
    jobs = {}
    for name, pc, res in [("single", dict(grad_accum=4, parallel="none"), {}),
                          ("ddp", dict(grad_accum=1, parallel="ddp"), dict(nodes=2, tasks_per_node=2)),
                          ("fsdp", dict(grad_accum=1, parallel="fsdp"), dict(nodes=2, tasks_per_node=2))]:
        run = tmp_path / name; run.mkdir()
        (run / "data").symlink_to(tmp_path / "base" / "data", target_is_directory=True)
        cfg = _tiny_pretrain_config(tmp_path, **pc)
        jobs[name] = L.launch(cfg, "pretrain", resources=cfg.resources.model_copy(update=res), run_dir=run)
    for name, j in jobs.items():
        j.result(timeout_s=600)
    loss = {n: [(r["step"], r["loss"]) for r in read_metrics(tmp_path / n / "pretrain" / "metrics.jsonl") if "loss" in r] for n in jobs}
    assert [s for s, _ in loss["single"]] == list(range(1, 9))
    for par in ("ddp", "fsdp"):
        assert [s for s, _ in loss[par]] == list(range(1, 9)), loss[par]
        diff = max(abs(a - b) for (_, a), (_, b) in zip(loss["single"], loss[par]))
        print(f"{par} on 2 nodes x 2 tasks: max |loss - single| over 8 steps = {diff:.2e}")
        assert diff < 1e-4 * max(a for _, a in loss["single"]), (par, loss["single"], loss[par])
        summary = json.loads((tmp_path / par / "pretrain" / "summary.json").read_text())
        assert summary["world_size"] == 4
