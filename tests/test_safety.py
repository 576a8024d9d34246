"""Issue 14, items 3 and 5: one writer per run, and safe files and secrets. Real processes (the installed `forge-nb`),
then every property checked again from what is on disk: metrics lines, the job registry, checkpoints, file modes,
the bytes of every file a run holds."""
import ast, json, os, re, socket, stat, subprocess, sys, time
from pathlib import Path
import pytest

from forge_nb.config import PipelineConfig, ResourcesConfig

from forge_nb.runs import save_config
from forge_nb.jobs import read_registry, Job
from forge_nb.demo import tiny_config
from conftest import SECRETS, files_holding_secrets

ROOT = Path(__file__).resolve().parents[1]
FORGE = Path(sys.executable).parent/"forge-nb"
SECRET = "fake-api-token-" + "7f3a9c2e1b4d"          # a value no file may hold
SECRET_ENV = {"FORGE_TEST_API_TOKEN": SECRET}


def forge(*args, env=None, cwd=None, timeout=600, wait=True):
    cmd = [str(FORGE), *map(str, args)]
    e = dict(os.environ, **(env or {}))
    if not wait: return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e, cwd=cwd)
    return subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=cwd, timeout=timeout)


def show(rc, out, err) -> str: return f"exit {rc}\n--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-3000:]}"


def files_holding(root: Path, needle: str) -> list:
    "Every file under `root` whose bytes contain `needle` (pickles, logs, sbatch scripts, checkpoints included)."
    return [str(f) for f in root.rglob("*") if f.is_file() and needle.encode() in f.read_bytes()]


def check_metrics(path: Path):
    "Each line valid JSON; per stage, the steps of training records strictly increase and no step goes backwards."
    lines = path.read_text().splitlines()
    recs = [json.loads(l) for l in lines]                              # raises on an interleaved or torn line
    assert recs, path
    steps = [r["step"] for r in recs if "step" in r and "event" not in r]
    assert steps == sorted(steps), f"{path}: steps go backwards: {steps}"
    train = [r["step"] for r in recs if "loss" in r and "step" in r]
    assert len(train) == len(set(train)), f"{path}: a training step logged twice: {train}"
    return recs


def check_checkpoints(stage_dir: Path) -> list:
    "Finished checkpoints only (no temporaries left), each one's weights loadable."
    import torch
    from safetensors.torch import load_file
    ck = stage_dir/"checkpoints"
    assert not [p.name for p in ck.iterdir() if ".tmp-" in p.name or ".old-" in p.name], list(ck.iterdir())
    done = sorted(p for p in ck.glob("step_*"))
    for p in done:
        assert (p/"COMPLETE").exists(), p
        shards = sorted((p/"state").glob("*.safetensors"))     # the weights and optimizer state (TrainState: state/ shards)
        assert shards, f"{p}: no state/*.safetensors shards: {sorted(str(f.relative_to(p)) for f in p.rglob('*'))}"
        for w in sorted(p.rglob("*.safetensors")):               # every tensor file, state/ shards and rng.safetensors
            t = load_file(str(w))
            assert all(v.numel() == 0 or torch.isfinite(v.float()).all() for v in t.values()), w
        assert any(k.startswith("model.") for w in shards for k in load_file(str(w))), f"{p}: no model weights in its shards"
    return [int(p.name.split("_")[1]) for p in done]


@pytest.fixture
def tiny(tmp_path):
    "`t.yaml`: the tiny data + pretrain pipeline (8 steps, checkpoints at 4 and 8), run directory `<tmp>/t`."
    save_config(tiny_config(tmp_path, steps=8, eval_every=4, save_every=4, eval_batches=1, log_every=1), tmp_path/"t.yaml")
    return tmp_path


def test_two_runs_at_once_one_writer_no_secret_owner_only(tiny):
    "Two `forge-nb run` of one config at the same moment, and a `launch` while the winner's job runs: one writer."
    run = tiny/"t"
    a, b = (forge("run", "t.yaml", cwd=tiny, env=SECRET_ENV, wait=False) for _ in range(2))
    t0 = time.time()
    while not read_registry(run) and time.time() - t0 < 300 and a.poll() is None and b.poll() is None: time.sleep(0.5)
    c = forge("launch", "t.yaml", "--stage", "data", cwd=tiny, env=SECRET_ENV)       # while the winner's data job runs
    outs = [(p.returncode if p.poll() is not None else p.wait(timeout=900), *p.communicate()) for p in (a, b)]
    ok = [o for o in outs if o[0] == 0]
    refused = [o for o in outs if o[0] != 0]
    assert len(ok) == 1 and len(refused) == 1, "\n".join(show(*o) for o in outs)
    jobs = read_registry(run)
    ids = [j["job_id"] for j in jobs]
    # the loser and the late launch: one line naming the run's holder (its job id once it has one), nothing submitted
    line = refused[0][2].splitlines()[0]
    assert line.startswith("forge-nb: error: run 't' is in use by "), show(*refused[0])
    assert c.returncode == 1, show(c.returncode, c.stdout, c.stderr)
    assert c.stderr.splitlines()[0].startswith("forge-nb: error: run 't' is in use by job "), show(c.returncode, c.stdout, c.stderr)
    assert any(f"job {i} (" in c.stderr for i in ids), (ids, c.stderr)
    # jobs.json: valid, two jobs (data, pretrain) from one launcher, each once
    reg = json.loads((run/"jobs.json").read_text())["jobs"]
    assert [r["stage"] for r in reg] == ["data", "pretrain"] and len(set(ids)) == 2, reg
    assert len({r["launched_by"] for r in reg}) == 1, [r["launched_by"] for r in reg]
    assert all(Job(r).state() == "COMPLETED" for r in reg)
    # metrics and checkpoints: nothing interleaved, each training step once, checkpoints whole
    recs = check_metrics(run/"pretrain"/"metrics.jsonl")
    assert sorted(r["step"] for r in recs if "loss" in r) == list(range(1, 9)), recs
    assert check_checkpoints(run/"pretrain") == [4, 8]
    # the lock went with the jobs; the secret never reached a file; only the owner can read the run
    assert not (run/".run.lock").exists()
    assert files_holding(run, SECRET) == []
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    # a lock whose process died and whose jobs ended is taken over, and said so (every stage is then skipped)
    (run/".run.lock").write_text(json.dumps({"owner": {"pid": 2**22 + 11, "host": socket.gethostname(), "start": "1"},
                                             "jobs": [{k: reg[-1][k] for k in ("job_id", "stage", "cluster", "folder", "run_dir")}]}))
    r = forge("run", "t.yaml", cwd=tiny)
    assert r.returncode == 0, show(r.returncode, r.stdout, r.stderr)
    assert f"forge_nb: run 't': taking over a stale lock (process {2**22 + 11} on {socket.gethostname()} is gone; its jobs ended: job {ids[-1]})" in r.stdout
    assert "nothing to run" in r.stdout and not (run/".run.lock").exists()


@pytest.mark.slurm
def test_slurm_launch_holds_the_run_until_its_job_ends(tiny, slurm_cluster):
    "On the cluster: a second launch while the first's job is queued or running is refused with its SLURM job id; no secret in the sbatch script or logs."
    run = tiny/"t"
    r = forge("launch", "t.yaml", "--stage", "data", "--cluster", "slurm", "--partition", "cpu", cwd=tiny, env=SECRET_ENV)
    assert r.returncode == 0, show(r.returncode, r.stdout, r.stderr)
    jid = read_registry(run)[0]["job_id"]
    r2 = forge("launch", "t.yaml", "--stage", "data", "--cluster", "slurm", "--partition", "cpu", cwd=tiny, env=SECRET_ENV)
    assert r2.returncode == 1 and r2.stderr.startswith(f"forge-nb: error: run 't' is in use by job {jid} (data, slurm, "), \
        show(r2.returncode, r2.stdout, r2.stderr)
    assert Job(read_registry(run)[0]).wait(timeout_s=600) == "COMPLETED"
    assert [j["job_id"] for j in read_registry(run)] == [jid]                        # the refused launch submitted nothing
    assert list(run.glob("logs/*.sh")) and files_holding(run, SECRET) == []          # sbatch script, logs, pickles, config
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    r3 = forge("run", "t.yaml", "--stage", "data", "--cluster", "slurm", "--partition", "cpu", cwd=tiny)
    assert r3.returncode == 0 and f"taking over a stale lock (its jobs ended: job {jid})" in r3.stdout, show(r3.returncode, r3.stdout, r3.stderr)


# ------------------------------------------------------------------ permissions

def test_group_readable_from_a_site_profile(tmp_path, monkeypatch):
    "A site profile that shares runs with the group: 0o750 on disk; without it 0o700. The job's result is JSON."
    from forge_nb.launch import submit
    (tmp_path/"team.yaml").write_text("cluster: local\ngroup_readable: true\n")
    monkeypatch.setenv("FORGE_PROFILES_DIR", str(tmp_path))
    shared = submit(len, [1, 2], resources={"profile": "team"}, run_dir=tmp_path/"runs"/"shared")
    private = submit(len, [1], run_dir=tmp_path/"runs"/"private")
    assert (shared.result(timeout_s=120), private.result(timeout_s=120)) == (2, 1)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)
    assert (mode(tmp_path/"runs"/"shared"), mode(tmp_path/"runs"/"private")) == (0o750, 0o700)
    res = json.loads((shared.folder/f"{shared.job_id}_0_result.json").read_text())
    assert {k: res[k] for k in ("outcome", "value")} == {"outcome": "success", "value": 2}
    assert res.keys() == {"outcome", "value", "started", "finished"} and res["started"] <= res["finished"]   # the stage's times


# ------------------------------------------------------------------ nothing unpickled, no remote code

PICKLE_CALLS = re.compile(r"\b(pickle|cPickle|dill|cloudpickle|joblib|shelve|marshal)\.(load|loads|Unpickler|open)\b|"
                          r"\byaml\.(load|unsafe_load|full_load)\(|allow_pickle\s*=\s*True")


def package_sources() -> dict:
    return {p: p.read_text() for p in (ROOT/"forge_nb").rglob("*.py") if p.name != "_modidx.py"}


def test_nothing_loaded_from_a_run_or_user_path_is_unpickled():
    "The package's loaders: JSON, YAML (safe), safetensors, NumPy (no pickles), torch.load only with weights_only=True; one guarded pickle."
    hits = [(p.relative_to(ROOT).as_posix(), l.strip()) for p, s in package_sources().items()
            for l in s.splitlines() if PICKLE_CALLS.search(l)]
    assert hits == [("forge_nb/jobs.py", "with open(p, \"rb\") as f: return pickle.load(f)")], hits
    guarded = package_sources()[ROOT/"forge_nb/jobs.py"]
    assert "if not _owner_only(p): return" in guarded                               # ... after the ownership check
    for p, s in package_sources().items():
        for node in ast.walk(ast.parse(s)):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and getattr(node.func, "value", None) is not None \
                    and getattr(node.func.value, "id", None) == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in kw and getattr(kw["weights_only"], "value", None) is True, f"{p}:{node.lineno}"


def test_a_result_pickle_others_could_write_is_not_unpickled(tmp_path):
    "A result pickle in a folder other users can write is refused; the JSON result is preferred to the pickle."
    from forge_nb.jobs import _read_result
    marker = tmp_path/"unpickled"
    class Evil:
        def __reduce__(self): return (Path.touch, (marker,))
    import pickle
    logs = tmp_path/"logs"; logs.mkdir()
    (logs/"7_0_result.pkl").write_bytes(pickle.dumps(("success", Evil())))
    logs.chmod(0o777)
    out = _read_result(logs, "7")
    assert out[0] == "error" and "not unpickled" in out[1] and not marker.exists()
    logs.chmod(0o700)
    (logs/"7_0_result.json").write_text(json.dumps({"outcome": "success", "value": {"loss": 1.5}}))
    assert _read_result(logs, "7") == ("success", {"loss": 1.5}) and not marker.exists()


def test_every_transformers_load_passes_trust_remote_code():
    "Every `from_pretrained` call in the package says `trust_remote_code=` (the config's field, default off, or False)."
    missing = []
    for p, s in package_sources().items():
        for node in ast.walk(ast.parse(s)):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "from_pretrained":
                if "trust_remote_code" not in {k.arg for k in node.keywords}: missing.append(f"{p.name}:{node.lineno}")
    assert missing == [], missing
    c = PipelineConfig()
    assert (c.tokenizer.trust_remote_code, c.sft.trust_remote_code, c.rl.trust_remote_code) == (False, False, False)


REMOTE_TOKENIZER = '''
import json, os, sys
from pathlib import Path
from forge_nb.data.tokenizer import train_tokenizer, load_tokenizer
d = Path(sys.argv[1])
train_tokenizer(["hello world " * 50, "some more text here"] * 20, out_dir=d, vocab_size=300)
cfg = json.loads((d/"tokenizer_config.json").read_text())
cfg["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
(d/"tokenizer_config.json").write_text(json.dumps(cfg))
(d/"evil.py").write_text("from pathlib import Path\\nPath(%r).touch()\\n"
                         "from transformers import PreTrainedTokenizerFast as EvilTokenizer\\n" % str(d/"code-ran"))
try: load_tokenizer(d); print("loaded")
except Exception as e: print("refused:", type(e).__name__)
print("code ran" if (d/"code-ran").exists() else "code did not run")
load_tokenizer(d, trust_remote_code=True)      # turned on: the folder's code runs (so the check above could fail)
print("turned on: code ran" if (d/"code-ran").exists() else "turned on: code did not run")
'''


def test_a_tokenizer_folder_with_code_is_not_run(tmp_path):
    "A tokenizer folder that ships Python (`auto_map`): with trust_remote_code off (the default) its code never runs."
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path/"modules"), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", REMOTE_TOKENIZER, str(tmp_path/"tok")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "code did not run" in r.stdout.splitlines()[1], r.stdout + r.stderr[-2000:]
    assert "turned on: code ran" in r.stdout, r.stdout + r.stderr[-2000:]


# ------------------------------------------------------------------ secrets a job prints or returns

def _echo_jobs(tmp: Path, cluster: str) -> tuple:
    "Two jobs: one prints and returns secret-looking environment values; one gets a config holding a secret in a field value and logs it."
    import job_probes
    from forge_nb import launch as L
    res = ResourcesConfig(cluster=cluster, cpus_per_task=1, time_min=5, **({"partition": "cpu"} if cluster == "slurm" else {}))
    cfg = PipelineConfig(name="echo", runs_dir=str(tmp), sft={"eval_prompts": [f"log in with {SECRETS['HF_TOKEN']} first"]})
    return (L.submit(job_probes.echo_secrets, list(SECRETS), resources=res, run_dir=tmp/"echo", name="echo"),
            L.submit(job_probes.echo_prompt, cfg, resources=res, run_dir=tmp/"echo", name="prompt"))


def _check_echo(jobs: tuple, run: Path):
    """What the jobs printed (print, stderr, logging) and returned reached their log files and results redacted; the job
    given a config with a secret in a field value got the value itself (its hash) and logged it redacted; no file holds a secret."""
    import hashlib
    echo, prompt = jobs
    assert echo.result(timeout_s=600) == [f"{k}=<redacted>" for k in SECRETS]
    out, err = echo.stdout(), echo.stderr()
    for k in SECRETS:
        assert f"echo_secrets: print {k}=<redacted>" in out, out[-2000:]
        assert f"echo_secrets: stderr {k}=<redacted>" in err and f"echo_secrets: logging {k}=<redacted>" in err, err[-2000:]
    assert prompt.result(timeout_s=600) == hashlib.sha256(f"log in with {SECRETS['HF_TOKEN']} first".encode()).hexdigest()
    assert "echo_prompt: log in with <redacted> first" in prompt.stdout(), prompt.stdout()[-2000:]
    kinds = {f.name.split("_", 2)[-1] for f in (run/"logs").iterdir()}
    assert {"log.out", "log.err", "result.pkl", "result.json"} <= kinds and any(k.endswith("submitted.pkl") for k in kinds), kinds
    assert files_holding_secrets(run) == []


def test_a_secret_a_local_job_prints_or_returns_is_redacted(tmp_path, monkeypatch):
    "Local jobs that print secret-looking environment values (print, stderr, a logger), return them, or get one in a config field: their log files, results and pickles hold none."
    for k, v in SECRETS.items(): monkeypatch.setenv(k, v)
    _check_echo(_echo_jobs(tmp_path, "local"), tmp_path/"echo")


@pytest.mark.slurm
def test_a_secret_a_slurm_job_prints_or_returns_is_redacted(slurm_cluster, tmp_path, monkeypatch):
    "The same jobs on the cluster: the sbatch scripts, SLURM's output files, submitit's pickles hold no secret."
    for k, v in SECRETS.items(): monkeypatch.setenv(k, v)
    jobs = _echo_jobs(tmp_path, "slurm")
    _check_echo(jobs, tmp_path/"echo")
    assert all((tmp_path/"echo"/"logs"/f"{j.job_id}_submission.sh").exists() for j in jobs)
