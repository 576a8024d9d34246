"""End to end: the README's main job (`forge-nb demo`), shortened, on this machine through the local launcher."""
import json, subprocess, sys, time
from pathlib import Path
import pytest

PY = Path(sys.executable)
ROOT = Path(__file__).resolve().parents[1]

SHORT_SFT_RL = [a for kv in ["sft.steps=4", "sft.eval_every=4", "sft.save_every=4", "sft.log_every=2", "sft.eval_examples=8",
                              "sft.n_eval_prompts=2", "sft.max_new_tokens=8", "rl.steps=2", "rl.save_every=2",
                              "rl.max_completion_length=12", "rl.report_samples=1"] for a in ("--set", kv)]

@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path):
    # the README's first command, `bash scripts/demo.sh` (set-up, then `forge-nb demo`), shortened by the arguments it passes on
    r = subprocess.run(["bash", str(ROOT/"scripts"/"demo.sh"), "--runs-dir", str(tmp_path), "--name", "e2e", "--steps", "12",
                        "--set", "pretrain.eval_every=6", "--set", "pretrain.save_every=6", "--set", "pretrain.log_every=3",
                        "--set", "tokenizer.train_bytes=300000", "--set", "pretrain.micro_batch_size=4", *SHORT_SFT_RL],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[pretrain]" in r.stdout and "finished" in r.stdout
    run = tmp_path/"e2e"
    # the whole lifecycle: SFT on examples built from the documents, GRPO on the demo policy, the report (path printed last)
    assert json.loads((run/"sft"/"eval.json").read_text())["generations"]
    rep = json.loads((run/"rl"/"report.json").read_text())
    assert list(rep["rules"]) == ["cites_source", "concise", "known_words"]
    assert r.stdout.rstrip().splitlines()[-1] == f"forge_nb: report: {(run/'report.html').absolute()}"
    assert "<svg" in (run/"report.html").read_text()
    recs = [json.loads(l) for l in (run/"pretrain"/"metrics.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in recs) == 12
    assert any(k.startswith("val/") and k.endswith("/bpb") for r in recs for k in r), "no per-domain validation"
    # the final model is an ordinary Hugging Face checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer
    final = run/"pretrain"/"final"
    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    ids = tok("def main():", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    # the same command again reuses every finished stage: nothing is submitted, nothing is rewritten
    before = {p: p.stat().st_mtime_ns for p in [run/"data"/"manifest.json", final/"config.json", run/"rl"/"final"/"config.json"]}
    t0 = time.time()
    r = subprocess.run([str(PY.parent/"forge-nb"), "demo", "--runs-dir", str(tmp_path), "--name", "e2e", "--steps", "12",
                        "--set", "pretrain.eval_every=6", "--set", "pretrain.save_every=6", "--set", "pretrain.log_every=3",
                        "--set", "tokenizer.train_bytes=300000", "--set", "pretrain.micro_batch_size=4", *SHORT_SFT_RL],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert all(f"[{s}] skipped:" in r.stdout for s in ["data", "pretrain", "sft", "rl"]) and " job " not in r.stdout, r.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert time.time() - t0 < 60


# ------------------------------------------------------------------ kill and rerun; launch then run; the same pipeline on SLURM
import os, re, signal, yaml
from forge_nb.runs import save_config
from forge_nb.jobs import read_registry
from forge_nb.demo import tiny_config, tiny_lifecycle
from forge_nb.report import report_figures
from forge_nb.runs import RunDir, latest_trainer_checkpoint
from conftest import SECRETS, files_holding_secrets

FORGE = str(PY.parent/"forge-nb")


def start(*args, cwd, log):
    "`forge-nb ARGS` in its own session, its output into `log` (read while it runs); secret-looking variables set, as a user's shell has them."
    return subprocess.Popen([FORGE, *args], cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", **SECRETS})


def no_secret_in(run: Path, kinds: tuple) -> int:
    "No file of `run` holds a secret's value (every file: configs, logs, sbatch scripts, jobs.json, metrics, report, models); the files of each kind were there to search. Files searched."
    files = [f for f in run.rglob("*") if f.is_file()]
    missing = [k for k in kinds if not any(f.match(k) for f in files)]
    assert not missing, f"{run}: nothing to search of {missing}"
    assert files_holding_secrets(run) == [], files_holding_secrets(run)
    return len(files)


def finish(proc, log, timeout=600) -> str:
    assert proc.wait(timeout=timeout) == 0, Path(log).read_text()[-4000:]
    return Path(log).read_text()


def steps_logged(run: Path, stage: str) -> int:
    steps = [json.loads(l).get("step") for l in (run/stage/"metrics.jsonl").read_text().splitlines() if '"loss"' in l] \
        if (run/stage/"metrics.jsonl").exists() else []
    return max([s for s in steps if isinstance(s, int)], default=0)


def kill_when(proc, run: Path, stage: str, checkpoint, timeout=300) -> int:
    """Wait until `stage` has a finished checkpoint and has logged a step beyond it, then SIGKILL the pipeline process
    and the stage's job (its whole process group: the local executor starts each job in a session of its own).
    Returns the checkpoint's step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the pipeline ended before it could be killed"
        ck = checkpoint()
        step = int(re.sub(r"\D", "", ck.name)) if ck else None
        if step and steps_logged(run, stage) > step:
            job = [r for r in read_registry(run) if r["stage"] == stage][-1]
            os.kill(proc.pid, signal.SIGKILL); proc.wait()
            os.killpg(int(job["job_id"]), signal.SIGKILL)
            while True:                                       # nothing of the job is left running
                try: os.killpg(int(job["job_id"]), 0); time.sleep(0.1)
                except ProcessLookupError: break
            return step
        time.sleep(0.05)
    raise AssertionError(f"{stage}: no checkpoint and later step within {timeout} s")


def first_step_of_last_job(run: Path, stage: str) -> tuple:
    "(job id, first `step N/` the newest job of `stage` logged, its log) from the job's own output file."
    job = [r for r in read_registry(run) if r["stage"] == stage][-1]
    out = (run/"logs"/f"{job['job_id']}_0_log.out").read_text()
    return job["job_id"], int(re.search(r"\bstep (\d+)/\d+", out).group(1)), out


@pytest.mark.slow
def test_killed_during_pretraining_and_sft_resumes_from_checkpoints(tmp_path):
    """SIGKILL the pipeline and its job during pretraining, run the same command again, SIGKILL it during SFT, run it
    again: each stage resumes from its last checkpoint (the resumed job's first logged step is the one after it), finished
    stages are skipped, and the final models load."""
    # a few steps per checkpoint, so a kill lands after one and before the stage ends even when the machine is loaded
    cfg = tiny_lifecycle(tmp_path, name="kill", steps=40, save_every=10, eval_every=40, log_every=1,
                         sft={"steps": 16, "save_every": 4, "eval_every": 16, "log_every": 1})
    cfg = cfg.model_copy(update={"stages": ["data", "pretrain", "sft"]})
    save_config(cfg, tmp_path/"kill.yaml")
    run, t0 = tmp_path/"kill", time.time()
    p = start("run", "kill.yaml", cwd=tmp_path, log=tmp_path/"1.log")
    pre_ck = kill_when(p, run, "pretrain", lambda: RunDir(run).stage("pretrain").latest_checkpoint())
    p = start("run", "kill.yaml", cwd=tmp_path, log=tmp_path/"2.log")
    sft_ck = kill_when(p, run, "sft", lambda: latest_trainer_checkpoint(run/"sft"/"checkpoints"))
    out2 = (tmp_path/"2.log").read_text()
    jid, first, log = first_step_of_last_job(run, "pretrain")
    print(f"pretrain: killed after checkpoint step {pre_ck}; the rerun's job {jid} logged step {first} first")
    assert "[data] skipped:" in out2 and pre_ck < first <= pre_ck + 1 and f"(step {pre_ck})" in log, out2[-3000:] + log[-2000:]
    out3 = finish(start("run", "kill.yaml", cwd=tmp_path, log=tmp_path/"3.log"), tmp_path/"3.log")
    jid, first, log = first_step_of_last_job(run, "sft")
    print(f"sft: killed after checkpoint step {sft_ck}; the rerun's job {jid} logged step {first} first; {time.time() - t0:.0f} s")
    assert sft_ck < first <= sft_ck + 1 and f"checkpoint-{sft_ck}" in log, log[-3000:]
    assert "[data] skipped:" in out3 and "[pretrain] skipped:" in out3, out3[-3000:]
    assert steps_logged(run, "pretrain") == 40 and steps_logged(run, "sft") == 16
    from transformers import AutoModelForCausalLM
    for st in ("pretrain", "sft"):
        assert AutoModelForCausalLM.from_pretrained(run/st/"final").num_parameters() > 0


@pytest.mark.slow
def test_launch_then_run_reruns_nothing(tmp_path):
    """`forge-nb launch` (nobody waits), then `forge-nb run` once the launched jobs ended: every stage is found finished
    from its job's result and nothing is submitted again."""
    from forge_nb.jobs import Job
    save_config(tiny_config(tmp_path, name="lr", steps=4), tmp_path/"lr.yaml")
    r = subprocess.run([FORGE, "launch", "lr.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and re.findall(r"submitted (\w+):", r.stdout) == ["data", "pretrain"], r.stdout + r.stderr
    for rec in read_registry(tmp_path/"lr"): assert Job(rec).wait(timeout_s=300) == "COMPLETED"
    r = subprocess.run([FORGE, "run", "lr.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "[data] skipped:" in r.stdout and "[pretrain] skipped:" in r.stdout, r.stdout + r.stderr
    assert len(read_registry(tmp_path/"lr")) == 2 and (tmp_path/"lr"/"report.html").exists()
    rec = json.loads((tmp_path/"lr"/"pretrain"/"stage.json").read_text())
    assert rec["recorded_by"] == "job result"
    # its wall time, recorded by the job: at least the span of its metrics records, at most submission → result file
    logs, jid = tmp_path/"lr"/"logs", rec["job_id"]
    t = [json.loads(l)["time"] for l in (tmp_path/"lr"/"pretrain"/"metrics.jsonl").read_text().splitlines() if '"time"' in l]
    upper = (logs/f"{jid}_0_result.json").stat().st_mtime - (logs/f"{jid}_submitted.pkl").stat().st_mtime
    assert max(t) - min(t) - 0.1 <= rec["seconds"] <= upper + 0.1, (rec, max(t) - min(t), upper)
    page = (tmp_path/"lr"/"report.html").read_text()      # the report's time table has a row for every stage
    rows = re.findall(r"<tr><td>(\w+)</td><td>([\d.]+)</td><td>\d+%</td><td>([^<]+)</td></tr>", page)
    assert [(s, src) for s, _, src in rows] == [("data", "data manifest"), ("pretrain", "stage.json")], rows
    assert abs(float(rows[1][1]) - rec["seconds"]) < 0.5, (rows, rec)


def differences(a, b, path="") -> list:
    "(path, a, b) for every figure that is not exactly equal, recursively (the same keys are required)."
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, a, b)
        return [d for k in a for d in differences(a[k], b[k], f"{path}/{k}")]
    return [] if a == b else [(path, a, b)]


# Same config, same seeds, same code, CPU, same machine: a run as local jobs (`forge-nb run`, each stage a job on this
# machine) and a run as SLURM jobs on the dev cluster's nodes (this machine's CPUs) compute the same floating-point
# reductions in the same order, so every figure of their reports is equal bit for bit, and is compared with `==`: losses,
# bits per byte, pass rates and the mean reward. (A run with every stage in one process, `--foreground`, is not compared
# here: it is not the same computation; SFT's held-out loss after SFT differed from the jobs' by 2.3e-7.)


@pytest.mark.slurm
@pytest.mark.slow
def test_tiny_pipeline_on_slurm_matches_local(slurm_cluster, tmp_path):
    """`forge-nb run --cluster slurm` submits every stage at once as afterok-dependent jobs, follows them with progress
    lines and writes the report; its figures equal a local run's of the same config (run at the same time)."""
    # a secret where a user might put one: in a config value (an SFT eval prompt), while it is also in their environment
    cfg = tiny_lifecycle(tmp_path, sft={"eval_prompts": [f"Which token is {SECRETS['HF_TOKEN']}?", "What is a list?"]})
    for name in ("local", "slurm"):   # written as the user wrote it (save_config would redact it)
        (tmp_path/f"{name}.yaml").write_text(yaml.safe_dump(cfg.model_copy(update={"name": name}).to_dict(), sort_keys=False))
    t0 = time.time()
    loc = start("run", "local.yaml", cwd=tmp_path, log=tmp_path/"local.log")              # local jobs, at the same time
    out = finish(start("run", "slurm.yaml", "--cluster", "slurm", "--partition", "cpu", "--set", "resources.time_min=15",
                       cwd=tmp_path, log=tmp_path/"slurm.log"), tmp_path/"slurm.log", timeout=900)
    t_slurm = time.time() - t0
    reg = read_registry(tmp_path/"slurm")
    assert [r["stage"] for r in reg] == ["data", "pretrain", "sft", "rl"] and {r["cluster"] for r in reg} == {"slurm"}, reg
    for prev, rec in zip(reg, reg[1:]):                        # submitted at once, each after the one before it
        assert f"--dependency=afterok:{prev['job_id']}" in (tmp_path/"slurm"/"logs"/f"{rec['job_id']}_submission.sh").read_text()
    assert re.search(r"\[pretrain\] step=6 loss=\S+ .*\| 6/6 \(100%\)", out) and (tmp_path/"slurm"/"report.html").exists(), out[-3000:]
    finish(loc, tmp_path/"local.log", timeout=900)
    t_both = time.time() - t0
    a, b = report_figures(tmp_path/"local"), report_figures(tmp_path/"slurm")
    assert a.keys() == {"bpb", "sft", "rl", "citations"} and len(a["bpb"]) == 2, a    # citations: recounted per cite rule, compared below too
    assert {r["cluster"] for r in read_registry(tmp_path/"local")} == {"local"}, read_registry(tmp_path/"local")
    assert differences(a, b) == [], differences(a, b)                      # bit for bit: every figure of both reports
    n = len(json.dumps(a).split(","))
    print(f"slurm pipeline {t_slurm:.0f} s, both {t_both:.0f} s; all {n} figures of the two reports equal bit for bit")
    out = subprocess.run([FORGE, "run", "slurm.yaml", "--cluster", "slurm"], cwd=tmp_path, capture_output=True, text=True, timeout=120).stdout
    assert all(f"[{s}] skipped:" in out for s in ["data", "pretrain", "sft", "rl"]) and len(read_registry(tmp_path/"slurm")) == 4, out
    # both runs had HF_TOKEN, WANDB_API_KEY and AWS_SECRET_ACCESS_KEY in their environment (`start`): no file holds their values
    stages = ("config.yaml", "report.html", "*/metrics.jsonl", "*/stage.json", "*/final/config.json", "*/checkpoints/*/trainer_state.json",
              "rl/report.json", "sft/eval.json")
    n_local = no_secret_in(tmp_path/"local", stages)
    n_slurm = no_secret_in(tmp_path/"slurm", stages + ("jobs.json", "logs/*_submission.sh", "logs/*_log.out", "logs/*_log.err",
                                                       "logs/*_submitted.pkl", "logs/*_result.pkl", "logs/*_result.json"))
    for run in ("local", "slurm"):   # the stage got the value itself (not a placeholder) and wrote it redacted
        assert [g["prompt"] for g in json.loads((tmp_path/run/"sft"/"eval.json").read_text())["generations"]][0] == "Which token is <redacted>?"
    print(f"no secret in the {n_local} files of the local run nor the {n_slurm} of the SLURM run")
