"""Every shell command the README shows and every `forge-nb` subcommand, run as a user runs them: subprocesses of the
installed console script, checking what they print and their exit status, a happy path and an error path each.
The configs are tiny (`forge_nb.demo.tiny_config`: a 600-token tokenizer, 64-token sequences, a 2-layer model, a few steps)."""
import json, re, subprocess, sys, time
from pathlib import Path
import pytest, yaml

from forge_nb.config import PipelineConfig, load_config, implemented_stages

from forge_nb.runs import save_config
from forge_nb.launch import read_registry
from forge_nb.demo import tiny_config

ROOT = Path(__file__).resolve().parents[1]
FORGE = Path(sys.executable).parent/"forge-nb"

def forge(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    "Run the installed `forge-nb` console script."
    return subprocess.run([str(FORGE), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)

def show(r) -> str: return f"exit {r.returncode}\n--- stdout ---\n{r.stdout[-3000:]}\n--- stderr ---\n{r.stderr[-3000:]}"

# ------------------------------------------------------------------ the README's commands, each with the test that runs it

README_COMMANDS = {   # a command the README shows -> the test that runs it (a new command without a test fails below)
    "bash scripts/demo.sh": "test_pipeline.py::test_demo_pipeline_end_to_end",
    "bash scripts/demo.sh --size tiny": "test_demo.py::test_rerun_skips_sft_change_reruns_sft_and_rl_force_reruns_after",
    "bash scripts/test.sh": ".ci/run",                                   # CI runs it: it is the test suite itself
    'bash scripts/test.sh -m "not slurm and not browser"': ".ci/run",
    ".venv/bin/forge-nb config init my.yaml": "test_cli.py::test_readme_config_init_validate_run",
    ".venv/bin/forge-nb config validate my.yaml": "test_cli.py::test_readme_config_init_validate_run",
    ".venv/bin/forge-nb run my.yaml": "test_cli.py::test_readme_config_init_validate_run",
    ".venv/bin/forge-nb run my.yaml --stage data --foreground": "test_cli.py::test_readme_config_init_validate_run",
    ".venv/bin/forge-nb launch my.yaml --cluster slurm --partition gpu": "test_cli.py::test_readme_launch_on_slurm",
    ".venv/bin/forge-nb jobs": "test_cli.py::test_jobs_logs_cancel_launch_locally",
    ".venv/bin/forge-nb docs build": "test_docs.py::test_full_site_in_browser",
    "forge-nb docs readme": "test_cli.py::test_docs_commands",
    "forge-nb docs outputs": "test_cli.py::test_docs_commands",
    "bash scripts/test.sh --heavy": ".ci/run",                           # `.ci/run --heavy`, the scheduled heavier target
    "forge-nb curate my.yaml": "test_curate.py::test_curate_verb_as_a_job_with_progress_and_strict",
    "forge-nb demo --curate": "test_curate.py::test_tiny_demo_from_raw_files",
    "forge-nb profiles": "test_wheel.py::test_wheel_ships_the_profiles",
    "forge-nb profiles copy NAME": "test_wheel.py::test_wheel_ships_the_profiles",
    "forge-nb track sync RUN": "test_track.py::test_killed_tracker_loses_nothing",
}

def readme_commands(text:str) -> set:
    "Shell commands in the README: lines of ```sh blocks (comments dropped) and inline `forge-nb ...`/`bash scripts/...` spans."
    cmds = set()
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        cmds |= {l.split("  #")[0].strip() for l in block.splitlines() if l.strip() and not l.strip().startswith("#")}
    cmds |= {m.strip() for m in re.findall(r"`((?:\.venv/bin/)?forge-nb [^`]+|bash scripts/[^`]+)`", text)}
    return cmds

def test_every_readme_command_has_a_test():
    cmds = readme_commands((ROOT/"README.md").read_text())
    assert ".venv/bin/forge-nb config init my.yaml" in cmds and "bash scripts/demo.sh" in cmds      # the parser finds them
    assert cmds <= set(README_COMMANDS), f"README commands without a test: {sorted(cmds - set(README_COMMANDS))}"
    for test in set(README_COMMANDS.values()) - {".ci/run"}:
        f, name = test.split("::")
        assert f"def {name}(" in (ROOT/"tests"/f).read_text(), f"{test} does not exist"
    assert "scripts/test.sh" in (ROOT/".ci"/"run").read_text()

# ------------------------------------------------------------------ fixtures: a tiny config, a broken source

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    "A folder with `t.yaml`: the tiny data + pretrain pipeline, 4 steps, run directory `<folder>/t`."
    d = tmp_path_factory.mktemp("cli")
    save_config(tiny_config(d, steps=4, eval_every=2, save_every=4, eval_batches=1), d/"t.yaml")
    return d

@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    "A config whose only source has a malformed line 3: (folder, config, the JSONL file)."
    d = tmp_path_factory.mktemp("bad")
    docs = d/"docs.jsonl"; docs.write_text('{"text": "a fine document"}\n{"text": "another one"}\n{"text": "broken"\n')
    (d/"bad.yaml").write_text(f"name: bad\nruns_dir: {d}\nstages: [data]\ndata:\n  sources:\n    - {{name: bad, path: {docs}}}\n"
                              "tokenizer: {vocab_size: 300, train_bytes: 20000}\n")
    return d, d/"bad.yaml", docs

# ------------------------------------------------------------------ help, config

def test_help_lists_every_subcommand():
    r = forge("--help")
    assert r.returncode == 0, show(r)
    for word in ["demo", "run", "launch", "jobs", "logs", "cancel", "config", "docs", *implemented_stages()]: assert word in r.stdout
    r = forge("frobnicate")
    assert r.returncode == 2 and "invalid choice: 'frobnicate'" in r.stderr, show(r)

def test_readme_config_init_validate_run(tmp_path, bad_input):
    "The README's first three commands, verbatim, in a fresh folder (from a clone, with `.venv` there)."
    (tmp_path/".venv").symlink_to(Path(sys.executable).parents[1])
    sh = lambda cmd: subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    r = sh(".venv/bin/forge-nb config init my.yaml")
    assert r.returncode == 0 and r.stdout.strip() == "wrote my.yaml", show(r)     # was NameError: name 'Path' is not defined
    assert load_config(tmp_path/"my.yaml") == PipelineConfig()
    r = sh(".venv/bin/forge-nb config init my.yaml")
    assert r.returncode == 1 and "my.yaml exists; not overwriting" in r.stderr, show(r)
    r = sh(".venv/bin/forge-nb config validate my.yaml")
    assert (r.returncode, r.stdout.strip()) == (0, "my.yaml: ok (stages: data, pretrain)"), show(r)
    (tmp_path/"typo.yaml").write_text("name: x\npretrain:\n  stesp: 3\n")
    r = sh(".venv/bin/forge-nb config validate typo.yaml")
    assert r.returncode == 2 and "pretrain.stesp: unknown field (did you mean 'steps'?)" in r.stderr and "typo.yaml:3" in r.stderr, show(r)
    bad_input("config", "a misspelt field in the YAML", r, names=["pretrain.stesp", "did you mean 'steps'?", "typo.yaml:3"])
    # `run` on the defaults: no sources yet, said in one line (with where the job's traceback is), not a traceback
    r = sh(".venv/bin/forge-nb run my.yaml")
    err = r.stderr.splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr, show(r)
    assert err[0] == "forge-nb: error: data.sources: no sources configured", show(r)
    bad_input("inputs", "running the default config before adding any data source", r, names=["data.sources"])
    log = Path(re.search(r"full traceback: (\S+)", err[1]).group(1))
    assert log.is_absolute() and "Traceback" in log.read_text() and "no sources configured" in log.read_text()
    r = sh(".venv/bin/forge-nb run my.yaml --stage data --foreground")
    err = r.stderr.splitlines()
    assert r.returncode == 1 and err[0] == "forge-nb: error: data.sources: no sources configured" and "Traceback" not in r.stderr, show(r)
    assert err[1].startswith("forge-nb: stage 'data' failed (in this process); full traceback: ") and "data-foreground.err" in err[1]

def test_config_show_and_schema(tiny, bad_input):
    r = forge("config", "show", "t.yaml", "--set", "pretrain.steps=7", cwd=tiny)
    assert r.returncode == 0, show(r)
    assert yaml.safe_load(r.stdout)["pretrain"]["steps"] == 7 and yaml.safe_load((tiny/"t.yaml").read_text())["pretrain"]["steps"] == 4
    r = forge("config", "show", "nope.yaml", cwd=tiny)
    assert (r.returncode, r.stderr.strip()) == (2, "forge-nb: error: No such file or directory: 'nope.yaml'"), show(r)
    bad_input("inputs", "a config file that does not exist", r, names=["nope.yaml"])
    r = forge("config", "schema")
    assert r.returncode == 0 and "PretrainConfig" in json.loads(r.stdout)["$defs"], show(r)[:500]
    r = forge("config", "show", "t.yaml", "--set", "pretrain.steps=-1", cwd=tiny)
    assert r.returncode == 2 and "pretrain.steps: must be >= 1, got -1" in r.stderr, show(r)
    bad_input("config", "a negative step count in --set", r, names=["pretrain.steps", ">= 1", "-1"])
    # malformed overrides: one line naming the path, exit 2 (were IndexError/TypeError/a YAML parser's 3 lines, exit 1)
    for kv, did, says in [("data.sources.3.path=x", "--set into a list item that does not exist", "data.sources.3: no item 3 (the list has 2 items)"),
                          ("pretrain.steps.x=3", "--set below a field that is a value", "pretrain.steps: is a value (4), not a section with a field 'x'"),
                          ("pretrain.steps=[4", "--set with a value that is not valid YAML", "pretrain.steps: the value '[4' is not valid YAML")]:
        r = forge("config", "show", "t.yaml", "--set", kv, cwd=tiny)
        assert r.returncode == 2 and r.stderr.startswith(f"forge-nb: error: {says}") and r.stderr.count("\n") == 1, show(r)
        bad_input("config", did, r, names=[says])

# ------------------------------------------------------------------ stages: jobs by default, foreground on request

def test_failing_stage_is_one_line_with_the_log(bad, bad_input):
    d, cfg, docs = bad
    want = f"forge-nb: error: source 'bad': {docs}:3: malformed JSON (Expecting ',' delimiter at column 1)"
    r = forge("run", cfg)
    err = r.stderr.splitlines()
    assert r.returncode == 1 and len(err) == 2 and err[0] == want, show(r)
    bad_input("data", "a JSONL source with a broken line (its data job fails)", r, names=["source 'bad'", f"{docs}:3", "malformed JSON"])
    m = re.fullmatch(r"forge-nb: stage 'data' failed \(job (\d+)\); full traceback: (\S+) \(--debug prints it here\)", err[1])
    assert m, show(r)
    log = Path(m.group(2)).read_text()
    assert "Traceback (most recent call last)" in log and "forge_nb.data.sources.DataError: source 'bad'" in log
    r = forge("run", cfg, "--debug")
    assert r.returncode == 1 and r.stderr.startswith(want) and "Traceback (most recent call last)" in r.stderr, show(r)
    r = forge("--debug", "data", cfg, "--foreground")           # --debug before the subcommand too; the stage verb
    assert r.returncode == 1 and "Traceback" in r.stderr and "in read_jsonl" in r.stderr, show(r)
    r = forge("run", cfg, "--foreground")
    err = r.stderr.splitlines()
    assert r.returncode == 1 and err[0] == want and "Traceback" not in r.stderr, show(r)
    assert err[1] == f"forge-nb: stage 'data' failed (in this process); full traceback: {d/'bad'/'logs'/'data-foreground.err'} (--debug prints it here)"

def test_stage_verbs_and_foreground(tiny):
    "`forge-nb data` as a job, then `run --stage pretrain --foreground` in the CLI's own process (no job registered)."
    t0 = time.time()
    r = forge("data", "t.yaml", cwd=tiny)
    assert r.returncode == 0 and "[data] done:" in r.stdout, show(r)
    assert (tiny/"t"/"data"/"COMPLETE").exists()
    assert [j["stage"] for j in read_registry(tiny/"t")] == ["data"]
    r = forge("run", "t.yaml", "--stage", "pretrain", "--foreground", cwd=tiny)
    assert r.returncode == 0 and "stages pretrain in this process (foreground)" in r.stdout and "[pretrain] done:" in r.stdout, show(r)
    assert (tiny/"t"/"pretrain"/"final"/"config.json").exists()
    assert [j["stage"] for j in read_registry(tiny/"t")] == ["data"]      # no job for the foreground stage
    steps = [json.loads(l).get("step") for l in (tiny/"t"/"pretrain"/"metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 4
    print(f"data job + foreground pretrain: {time.time() - t0:.1f} s")

def test_stage_that_needs_an_earlier_one(tmp_path, bad_input):
    "Pretraining a run with no data stage yet: the job fails, and the one line says what to run first."
    save_config(tiny_config(tmp_path, steps=2), tmp_path/"t.yaml")
    r = forge("pretrain", "t.yaml", cwd=tmp_path)
    err = r.stderr.splitlines()
    assert r.returncode == 1 and err[0].startswith("forge-nb: error: ") and "data" in err[0] and "Traceback" not in r.stderr, show(r)
    bad_input("inputs", "pretraining before the data stage has run", r, names=["data"])

def test_mistyped_stage_or_force_is_one_line_before_anything_is_made(tiny, bad_input):
    "A stage name that does not exist (--stage) or is not in the run (--force): one line, exit 2, no run folder made."
    r = forge("run", "t.yaml", "--force", "rl", "--set", "name=typo", cwd=tiny)
    assert (r.returncode, r.stderr) == (2, "forge-nb: error: --force rl: not a stage of this pipeline (data, pretrain)\n"), show(r)
    bad_input("config", "--force with a stage the run does not have", r, names=["--force rl", "data, pretrain"])
    r = forge("run", "t.yaml", "--stage", "pertrain", "--set", "name=typo", cwd=tiny)
    assert r.returncode == 2 and r.stderr.startswith("forge-nb: error: --stage pertrain: no such stage (the stages: curate, data, pretrain"), show(r)
    bad_input("config", "a misspelt stage name in --stage", r, names=["--stage pertrain", "no such stage"])
    assert not (tiny/"typo").exists() and r.stdout == ""                    # nothing made, nothing started

# ------------------------------------------------------------------ jobs, logs, cancel, launch

def test_jobs_logs_cancel_launch_locally(tiny, tmp_path, bad_input):
    "Uses the run left by `test_stage_verbs_and_foreground` when it ran first; otherwise makes its own data job."
    runs = str(tiny)
    if not (tiny/"t"/"jobs.json").exists(): assert forge("data", "t.yaml", cwd=tiny).returncode == 0
    r = forge("jobs", "--runs-dir", runs)
    rows = [l.split() for l in r.stdout.splitlines()]
    assert r.returncode == 0 and rows[0][:5] == ["RUN", "STAGE", "CLUSTER", "JOB_ID", "STATE"], show(r)
    assert ["t", "data", "local"] == rows[1][:3] and rows[1][4] == "COMPLETED", show(r)
    assert forge("jobs", "--runs-dir", tmp_path).stdout.strip() == f"no jobs under {tmp_path}/"
    r = forge("logs", "t", "--runs-dir", runs, "--stage", "data")
    assert r.returncode == 0 and re.match(r"data \(job \d+\) is COMPLETED", r.stdout) and "--- stdout" in r.stdout, show(r)
    r = forge("logs", "nope", "--runs-dir", runs)
    assert r.returncode == 2 and "no run 'nope'" in r.stderr and "runs with jobs in" in r.stderr, show(r)
    bad_input("inputs", "the logs of a run name that has no jobs", r, names=["no run 'nope'"])
    r = forge("cancel", "t", "--runs-dir", runs, "--stage", "data")
    assert (r.returncode, r.stdout.strip()) == (0, "nothing to cancel in t (data)"), show(r)
    r = forge("cancel", "nope", "--runs-dir", runs)
    assert r.returncode == 2 and "no run 'nope'" in r.stderr, show(r)
    # launch: a long pretraining job, submitted and returned at once; then cancelled while it runs
    r = forge("launch", "t.yaml", "--stage", "pretrain", "--set", "pretrain.steps=100000", cwd=tiny, timeout=60)
    m = re.search(r"submitted pretrain: local job (\d+)", r.stdout)
    assert r.returncode == 0 and m and "follow: forge-nb logs t" in r.stdout, show(r)
    r = forge("cancel", "t", "--runs-dir", runs)
    assert r.returncode == 0 and f"cancelled pretrain: local job {m.group(1)}" in r.stdout, show(r)
    deadline = time.time() + 60
    while time.time() < deadline:
        state = [l.split() for l in forge("jobs", "--runs-dir", runs).stdout.splitlines() if m.group(1) in l][0][4]
        if state == "CANCELLED": break
        time.sleep(1)
    assert state == "CANCELLED"
    r = forge("launch", "t.yaml", "--set", "resources.gpus_per_node=64", cwd=tiny)
    assert r.returncode == 2 and "64 GPUs asked, this machine has" in r.stderr and "nothing was submitted" in r.stderr, show(r)
    bad_input("cluster", "more GPUs than this machine has, on the local executor", r, names=["resources.gpus_per_node", "nothing was submitted"],
              subs=[(r"this machine has \d+", "this machine has N")])

def test_launch_and_run_refuse_an_infeasible_mix_before_submitting(tmp_path, bad_input):
    "A token budget the corpus cannot feed under its epoch cap: `launch` and `run` say so, as the data job would, and submit nothing."
    save_config(tiny_config(tmp_path, steps=4), tmp_path/"t.yaml")
    for cmd in ("launch", "run"):
        r = forge(cmd, "t.yaml", "--set", "data.total_tokens=100000000", cwd=tmp_path, timeout=120)
        err = r.stderr.strip().splitlines()
        assert r.returncode != 0 and err and err[0].startswith("forge-nb: error: not submitted: infeasible mix plan"), show(r)
        assert "over its cap max_epochs" in r.stderr and "Traceback" not in r.stderr, show(r)
        bad_input("inputs", f"a token budget the sources cannot feed under their epoch cap (`{cmd}`)", r, names=["max_epochs", "not submitted"],
                  problems=2)                                                # one per source
    assert not (tmp_path/"t"/"jobs.json").exists() or read_registry(tmp_path/"t") == []

@pytest.mark.slurm
def test_readme_launch_on_slurm(slurm_cluster, tiny, tmp_path):
    "The README's launch command, verbatim, on the local SLURM cluster: both stages submitted, listed, cancelled."
    (tmp_path/".venv").symlink_to(Path(sys.executable).parents[1])
    cfg = tiny_config(tmp_path, steps=4)
    save_config(cfg.model_copy(update={"name": "slurm-readme"}), tmp_path/"my.yaml")
    r = subprocess.run(".venv/bin/forge-nb launch my.yaml --cluster slurm --partition gpu", shell=True, capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    ids = re.findall(r"submitted (\w+): slurm job (\d+)", r.stdout)
    assert r.returncode == 0 and [s for s, _ in ids] == ["data", "pretrain"], show(r)
    try:
        r = forge("jobs", "--runs-dir", tmp_path)
        assert r.returncode == 0 and all(j in r.stdout for _, j in ids) and "slurm" in r.stdout, show(r)
        r = forge("launch", "my.yaml", "--cluster", "slurm", "--partition", "nope", cwd=tmp_path)
        assert r.returncode == 2 and "nope" in r.stderr and "nothing was submitted" in r.stderr, show(r)
    finally:
        r = forge("cancel", "slurm-readme", "--runs-dir", tmp_path)
    assert r.returncode == 0, show(r)

# ------------------------------------------------------------------ demo, docs

def test_demo_error_path():
    "The demo's happy path is `test_pipeline.py::test_demo_pipeline_end_to_end` (slow), through `scripts/demo.sh`."
    r = forge("demo", "--steps", "many")
    assert r.returncode == 2 and "invalid int value: 'many'" in r.stderr, show(r)

def test_docs_commands(tmp_path):
    r = forge("docs", "readme", "--out", tmp_path/"README.md", cwd=ROOT)
    assert r.returncode == 0, show(r)
    assert (tmp_path/"README.md").read_text() == (ROOT/"README.md").read_text()       # the committed README is the generated one
    r = forge("docs", "check-readme", cwd=ROOT)
    assert r.returncode == 0, show(r)
    r = forge("docs", "check-outputs", cwd=ROOT)
    assert r.returncode == 0, show(r)
    # `docs outputs` in a project of one notebook: the kept cell's output is written, a stray one cleared
    nb = {"cells": [{"cell_type": "markdown", "id": "a", "metadata": {}, "source": "# X"},
                    {"cell_type": "code", "id": "b", "metadata": {}, "execution_count": None, "source": "#| keep_output\nprint(6 * 7)",
                     "outputs": []},
                    {"cell_type": "code", "id": "c", "metadata": {}, "execution_count": None, "source": "print('stray')",
                     "outputs": [{"name": "stdout", "output_type": "stream", "text": "stray\n"}]}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path/"nbs").mkdir(); (tmp_path/"nbs"/"01_x.ipynb").write_text(json.dumps(nb))
    r = forge("docs", "check-outputs", cwd=tmp_path)
    assert r.returncode == 1 and "01_x.ipynb: cell 2 has an output but no `#| keep_output`" in r.stderr, show(r)
    r = forge("docs", "outputs", cwd=tmp_path, timeout=120)
    cells = json.loads((tmp_path/"nbs"/"01_x.ipynb").read_text())["cells"]
    assert r.returncode == 0 and [["".join(o["text"]) for o in c["outputs"]] for c in cells[1:]] == [["42\n"], []], show(r)
    assert forge("docs", "check-outputs", cwd=tmp_path).returncode == 0
    r = forge("docs", "publish", cwd=ROOT)
    assert r.returncode == 2 and "invalid choice: 'publish'" in r.stderr, show(r)
    # `forge-nb docs` takes every option of the docs tooling (it passed only --out/--only before): the same help as
    # `python -m forge_nb.docs`, and an option the action does not use is refused in one line, not ignored
    h = forge("docs", "--help").stdout
    m = subprocess.run([sys.executable, "-m", "forge_nb.docs", "--help"], capture_output=True, text=True).stdout
    opts = lambda t: set(re.findall(r"^\s+(--[\w-]+)", t, re.M))
    assert opts(h) - {"--debug"} == opts(m) >= {"--out", "--nbs", "--only", "--no-execute", "--timeout", "--workers", "--title", "--root"}, h
    r = forge("docs", "readme", "--only", "01_x.ipynb", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (2, "forge-nb docs readme: --only applies to build, outputs only\n"), show(r)
