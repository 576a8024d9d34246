"""Launcher unit tests: validation (against a faked partition table), profiles, the sbatch script, and the local
executor end to end (background processes on this machine; no SLURM needed): results, logs, secrets, two ranks with
gloo, preemption-and-resume, pipelines whose middle stage fails, reattaching from a fresh process, the CLI functions."""
import hashlib, json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest

import job_probes
from forge_nb.config import PipelineConfig, ResourcesConfig
from forge_nb.runs import save_config
from forge_nb import launch as L

ROOT = Path(__file__).resolve().parents[1]
PARTS = [dict(name="cpu", nodes=2, gpus_per_node=0, free_gpus=0, cpus=4, mem_gb=8.0, max_time_min=60, state="UP",
              nodes_up=2, default=True, priority_tier=1),
         dict(name="gpu", nodes=2, gpus_per_node=4, free_gpus=8, cpus=4, mem_gb=8.0, max_time_min=120, state="UP",
              nodes_up=2, default=False, priority_tier=1)]


@pytest.mark.parametrize("kw,expect", [
    (dict(partition="nope"), "unknown partition 'nope'"),
    (dict(partition="gpu", gpus_per_node=5), "5 GPUs per node asked, the nodes of partition 'gpu' have 4"),
    (dict(partition="gpu", nodes=3), "3 nodes asked, partition 'gpu' has 2"),
    (dict(partition="cpu", time_min=61), "61 min asked, partition 'cpu' allows at most 60 min"),
    (dict(partition="cpu", tasks_per_node=4, cpus_per_task=2), "= 8 CPUs per node asked"),
    (dict(partition="cpu", mem_gb=64), "64 GB per node asked"),
])
def test_invalid_request_is_one_error_and_submits_nothing(tmp_path, kw, expect, bad_input):
    res = ResourcesConfig(cluster="slurm", **kw)
    errs = L.validate_resources(res, PARTS)
    assert len(errs) == 1 and expect in errs[0], errs
    with pytest.raises(L.ResourceError, match="nothing was submitted") as e:
        L.submit(job_probes.sleep_probe, 1, resources=res, run_dir=tmp_path / "run", partitions=PARTS)
    bad_input("cluster", "a SLURM request over the partition's limits: " + ", ".join(f"{k}={v}" for k, v in kw.items()), e,
              names=["resources.", expect, "nothing was submitted"])
    assert not (tmp_path / "run").exists()          # not even a run directory, let alone a job
    cfg = PipelineConfig(name="r", runs_dir=str(tmp_path), resources=res)
    with pytest.raises(L.ResourceError):
        L.launch_pipeline(cfg, stages=["data", "pretrain"], partitions=PARTS)
    assert not (tmp_path / "r" / "jobs.json").exists()


def test_valid_request_and_default_partition():
    assert L.validate_resources(ResourcesConfig(cluster="slurm", partition="gpu", nodes=2, tasks_per_node=2,
                                                gpus_per_node=2, time_min=120), PARTS) == []
    assert "partition 'cpu'" in L.validate_resources(ResourcesConfig(cluster="slurm", nodes=3), PARTS)[0]


def test_profile_fills_only_defaults(tmp_path, monkeypatch):
    (tmp_path / "site.yaml").write_text("cluster: slurm\npartition: gpu\ngpus_per_node: 4\ntasks_per_node: 4\n"
                                        "setup: ['module load cuda/12']\ntime_min: 240\n")
    monkeypatch.setenv("FORGE_PROFILES_DIR", str(tmp_path))
    r = L.resolve_resources(ResourcesConfig(profile="site", partition="cpu"))
    assert (r.cluster, r.partition, r.gpus_per_node, r.tasks_per_node, r.time_min) == ("slurm", "cpu", 4, 4, 240)
    assert r.setup == ["module load cuda/12"]
    (tmp_path / "bad.yaml").write_text("gpus_per_nod: 4\n")
    with pytest.raises(Exception, match="gpus_per_nod"):
        L.resolve_resources(ResourcesConfig(profile="bad"))


@pytest.mark.parametrize("name", ["local", "example-h100"])
def test_repository_profiles_load(name):
    p = ROOT / "slurm/profiles" / f"{name}.yaml"
    if not p.exists(): pytest.skip(f"{p} not written yet")
    r = L.resolve_resources(ResourcesConfig(profile=str(p)))
    assert r.profile == str(p)
    assert "#SBATCH" in L.sbatch_preview(PipelineConfig(), "pretrain", r)


def test_sbatch_preview_matches_submitit_and_keeps_secrets_out(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_supersecret_preview")
    res = ResourcesConfig(cluster="slurm", partition="gpu", nodes=2, tasks_per_node=4, gpus_per_node=4, mem_gb=7.5,
                          time_min=90, account="proj", qos="high", constraint="h100", sbatch_extra={"exclusive": ""},
                          env={"NCCL_DEBUG": "WARN"}, signal_delay_s=300)
    txt = L.sbatch_preview(PipelineConfig(name="x"), "pretrain", res, dependency="afterok:41")
    for line in ["--partition=gpu", "--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--mem=7680MB", "--time=90",
                 "--account=proj", "--qos=high", "--constraint=h100", "#SBATCH --exclusive", "--signal=USR2@300",
                 "--dependency=afterok:41", "--kill-on-invalid-dep=yes", "export NCCL_DEBUG=WARN", "-m submitit.core._submit"]:
        assert line in txt, line
    assert "hf_supersecret_preview" not in txt


def test_secret_in_resources_env_is_refused(tmp_path):
    with pytest.raises(L.ResourceError, match="resources.env.WANDB_API_KEY: looks like a secret"):
        L.submit(job_probes.sleep_probe, 0, resources=ResourcesConfig(env={"WANDB_API_KEY": "k"}), run_dir=tmp_path / "r")


def _grep_tree(root: Path, needle: str) -> list:
    hits = []
    for f in root.rglob("*"):
        if f.is_file() and needle.encode() in f.read_bytes(): hits.append(str(f))
    return hits


def test_local_job_secret_by_name_result_logs_registry(tmp_path, monkeypatch):
    secret = "hf_local_secret_0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    cfg = PipelineConfig(name="sec", runs_dir=str(tmp_path), resources=ResourcesConfig(env={"FORGE_PLAIN": "1"}))
    L.RunDir.for_config(cfg).create(); L.RunDir.for_config(cfg).save_config(cfg)
    job = L.launch_fn(job_probes.env_probe, "HF_TOKEN", cfg=cfg, name="probe")
    out = job.result(timeout_s=90)
    assert out["secret_sha"] == hashlib.sha256(secret.encode()).hexdigest()   # the job got it, by name
    assert out["RANK"] == "0" and out["WORLD_SIZE"] == "1"
    assert "env_probe: secret HF_TOKEN present=True" in job.stdout()
    assert _grep_tree(tmp_path / "sec", secret) == []                         # not in pickles, logs, config, registry
    rec = L.read_registry(tmp_path / "sec")[0]
    assert rec["name"] == "probe" and rec["cluster"] == "local" and rec["job_id"] == job.job_id


def test_local_two_ranks_gloo_ddp(tmp_path):
    job = L.submit(job_probes.ddp_probe, 3, resources=ResourcesConfig(tasks_per_node=2, time_min=5), run_dir=tmp_path / "ddp")
    r0 = job.result(timeout_s=180)
    r1 = job.result(task=1)
    assert r0["world_size"] == 2 and r0["allreduce"] == 3.0 and r1["rank"] == 1
    assert r0["params"][0] == r0["params"][1] == r1["params"][0]              # the ranks agree after DDP steps


def test_local_preempted_job_requeues_and_resumes(tmp_path):
    ref = job_probes.count_steps(str(tmp_path / "ref"), 25)
    job = L.submit(job_probes.count_steps, str(tmp_path / "count"), 25, 0.2,
                   resources=ResourcesConfig(time_min=5, max_requeues=3), run_dir=tmp_path / "pre")
    state = tmp_path / "count/state.json"
    t0 = time.time()
    while not (state.exists() and json.loads(state.read_text())["step"] >= 5):
        assert time.time() - t0 < 60, "the job did not start counting"
        time.sleep(0.2)
    task = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
            if p.read_text().rsplit(")", 1)[1].split()[1] == job.job_id]
    assert task, "no task process under the controller"
    os.kill(task[0], signal.SIGUSR2)                                       # what SLURM sends before preemption/time-out
    out = job.result(timeout_s=90)
    assert out["x"] == ref["x"] and out["steps"] == 25
    assert len(out["starts"]) == 2 and out["starts"][0] == 0 and out["starts"][1] >= 5   # resumed, not restarted
    assert "checkpoint requested" in job.stdout(tail=None)


def test_local_pipeline_middle_failure(tmp_path):
    a = L.submit(job_probes.write_marker, str(tmp_path / "m/a"), "a", run_dir=tmp_path / "p", name="data")
    b = L.submit(job_probes.fail_probe, "tokenizer exploded", run_dir=tmp_path / "p", name="pretrain", depends_on=[a])
    c = L.submit(job_probes.write_marker, str(tmp_path / "m/c"), "c", run_dir=tmp_path / "p", name="sft", depends_on=[b])
    assert c.wait(timeout_s=90) == "CANCELLED"
    assert (a.state(), b.state()) == ("COMPLETED", "FAILED")
    assert not (tmp_path / "m/c").exists()                                 # the last stage never ran
    why = L.attach(tmp_path / "p", "sft").why()
    assert "DependencyNeverSatisfied" in why and "pretrain" in why and "FAILED" in why and "never started" in why
    with pytest.raises(RuntimeError, match="tokenizer exploded"):
        b.result()


def test_local_pipeline_runs_in_order(tmp_path):
    jobs = [L.submit(job_probes.write_marker, str(tmp_path / f"m/{n}"), n, run_dir=tmp_path / "p", name=n,
                     depends_on=[]) for n in ["first"]]
    for n in ["second", "third"]:
        jobs.append(L.submit(job_probes.write_marker, str(tmp_path / f"m/{n}"), n, run_dir=tmp_path / "p", name=n,
                             depends_on=[jobs[-1]]))
    assert [j.result(timeout_s=90) for j in jobs] == ["first", "second", "third"]
    t = [float((tmp_path / f"m/{n}").read_text().split()[1]) for n in ["first", "second", "third"]]
    assert t == sorted(t)


def test_fresh_process_attaches_and_cancels(tmp_path):
    job = L.submit(job_probes.sleep_probe, 120, run_dir=tmp_path / "runs/longrun", name="pretrain")
    job.wait_state("RUNNING", timeout_s=30)
    code = ("from forge_nb.launch import attach\n"
            "j = attach('longrun', 'pretrain', runs_dir=%r)\n"
            "print('STATE', j.state()); j.cancel(); print('AFTER', j.wait(timeout_s=30))\n") % str(tmp_path / "runs")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "STATE RUNNING" in p.stdout and "AFTER CANCELLED" in p.stdout, p.stdout
    assert job.state() == "CANCELLED"


def test_cli_functions(tmp_path, capsys):
    job = L.submit(job_probes.write_marker, str(tmp_path / "m"), "v", run_dir=tmp_path / "runs/clirun", name="data")
    job.result(timeout_s=60)
    from forge_nb.cli import main
    runs = str(tmp_path / "runs")
    assert main(["jobs", "--runs-dir", runs]) == 0
    out = capsys.readouterr().out
    assert "clirun" in out and "COMPLETED" in out and job.job_id in out
    assert main(["logs", "clirun", "--runs-dir", runs]) == 0
    assert "is COMPLETED" in capsys.readouterr().out
    assert main(["logs", "nope", "--runs-dir", runs]) == 2
    assert "runs with jobs in" in capsys.readouterr().err
    assert main(["cancel", "clirun", "--runs-dir", runs]) == 0
    assert "nothing to cancel" in capsys.readouterr().out
    cfgp = tmp_path / "c.yaml"
    save_config(PipelineConfig(name="clibad", runs_dir=str(tmp_path / "runs")), cfgp)
    assert main(["launch", str(cfgp), "--set", "resources.nodes=2"]) == 2     # local executor: one node only
    assert "resources.nodes" in capsys.readouterr().err
    assert not (tmp_path / "runs/clibad/jobs.json").exists()


def test_local_job_outlives_the_submitting_process_group(tmp_path):
    "A kernel restart kills the kernel's whole process group: the local job must keep running and finish."
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import job_probes, time\nfrom forge_nb.launch import submit\n"
            "j = submit(job_probes.count_steps, %r, 12, 0.25, run_dir=%r, name='pretrain')\n"
            "print(j.job_id, flush=True); time.sleep(600)\n") % (str(Path(__file__).parent), str(tmp_path / "c"), str(tmp_path / "runs/kept"))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    job_id = p.stdout.readline().strip()
    assert job_id.isdigit(), job_id
    os.killpg(p.pid, signal.SIGKILL); p.wait()                            # the "kernel" and its process group are gone
    job = L.attach("kept", "pretrain", runs_dir=tmp_path / "runs")
    assert job.job_id == job_id and job.state() == "RUNNING"
    assert job.result(timeout_s=60)["steps"] == 12


# ---------------------------------------------------------------- local jobs that die without a result (issue 25, item 12)

def test_local_job_killed_by_a_signal_says_which(tmp_path):
    "A local job whose task dies without a result says how: the signal that killed it, or its exit status (recorded by its controller)."
    from forge_nb.jobs import Job
    for fn, args, expect in [(job_probes.die_by_signal, (int(signal.SIGKILL),), "task 0 was killed by signal 9 (SIGKILL)"),
                             (job_probes.die_by_signal, (int(signal.SIGSEGV),), "task 0 was killed by signal 11 (SIGSEGV)"),   # (submitit catches SIGTERM)
                             (job_probes.exit_without_result, (3,), "task 0 exited with status 3 before writing its result")]:
        job = L.submit(fn, *args, run_dir=tmp_path/f"r{fn.__name__}{args[0]}")
        with pytest.raises(RuntimeError) as e: job.result(timeout_s=120)
        assert f"ended FAILED: {job.stage} (job {job.job_id}) is FAILED: the process ended without a result: {expect}" in str(e.value), str(e.value)
        exit_rec = json.loads((job.folder/f"{job.job_id}_0_exit.json").read_text())   # what the controller wrote
        assert exit_rec["returncode"] == (-args[0] if fn is job_probes.die_by_signal else 3), exit_rec
        assert expect in Job(job.record).why()                                         # a fresh handle (another process) says the same


def test_local_job_slow_to_start_under_load_is_not_declared_dead(tmp_path):
    "Load simulated by stopping the job's whole process tree (SIGSTOP) from its first moment: it stays RUNNING, never FAILED, and finishes once it runs."
    from forge_nb.jobs import Job
    job = L.submit(job_probes.add, 2, 3, run_dir=tmp_path/"r")
    pid = int(job.job_id)
    os.killpg(pid, signal.SIGSTOP)                   # the controller leads its own session: its tasks are in its group
    try:
        seen = set()
        for _ in range(20):                          # 5 s in which the job cannot run a single instruction
            seen.add(Job(job.record).state()); time.sleep(0.25)
        assert seen == {"RUNNING"}, seen
    finally: os.killpg(pid, signal.SIGCONT)
    assert job.result(timeout_s=120) == 5 and job.state() == "COMPLETED"


def test_local_job_id_is_the_process_not_its_pid(tmp_path):
    "A local job's id is a pid; once the job ended, a later process given the same pid (even another submitit job) is not the job: not RUNNING, and cancel leaves it alone."
    from forge_nb.jobs import Job, proc_start
    job = L.submit(job_probes.add, 2, 3, run_dir=tmp_path/"r")
    assert job.result(timeout_s=120) == 5
    assert job.record["proc_start"] and job.record["proc_start"] > 0
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "submitit"])   # a process with 'submitit' in its command line
    try:
        time.sleep(0.3)
        rec = {**job.record, "job_id": str(other.pid)}                   # the job's record, as if `other` had got the job's pid
        assert proc_start(other.pid) != rec["proc_start"]
        j = Job(rec)
        assert j.state() != "RUNNING", j.why()
        j.cancel()
        assert other.poll() is None, "cancel killed a process that is not the job"
        assert Job({**rec, "proc_start": proc_start(other.pid)}).state() == "RUNNING"   # the same pid and start: the job itself
    finally: other.kill(); other.wait()
