"""The bad-input catalogue (the docs page nbs/99_bad_inputs.ipynb, made by `forge-nb docs catalogue` from the tests that
take the `bad_input` fixture, tests/conftest.py): the committed page is exactly what its entries render, it names
exactly the tests that take the fixture, every class of bad input has entries, and the generator writes it.

Then the classes of bad input no other test file covered, each tried as a new user would: in the shell where there is
a command for it (`forge-nb` run in this process, its stderr captured: what a terminal shows), in Python otherwise."""
import ast, json, os, shutil, subprocess, textwrap
from pathlib import Path

import pytest

from conftest import ROOT, seen_line
from forge_nb.config import ModelConfig, ResourcesConfig
from forge_nb.runs import save_config
from forge_nb.docs import CATALOGUE_PAGE, CATALOGUE_SECTIONS, catalogue_cells, find_pages, page_markdown, parse_catalogue

PAGE = ROOT/"nbs"/CATALOGUE_PAGE

# ---------------------------------------------------------------- the page

def fixture_tests(root: Path = ROOT) -> set:
    "`tests/test_x.py::test_name` of every test function that takes the `bad_input` fixture (read from the source)."
    out = set()
    for f in sorted((root/"tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                if any(a.arg == "bad_input" for a in node.args.args): out.add(f"tests/{f.name}::{node.name}")
    return out

def test_page_is_what_its_entries_render():
    "Nobody edited the page by hand, and every class of bad input the issue lists has at least one entry."
    cells = page_markdown(PAGE)
    entries = parse_catalogue(cells)
    assert cells == catalogue_cells(entries), "nbs/99_bad_inputs.ipynb is not what `forge-nb docs catalogue` writes: regenerate it"
    assert {e.category for e in entries} == set(CATALOGUE_SECTIONS), "a class of bad input has no entry"
    assert len(entries) == len(set(entries)) and all(e.message.strip() for e in entries)

def test_page_names_exactly_the_tests_that_take_the_fixture():
    "A test added (or removed) since the page was made fails this until the page is regenerated."
    on_page = {e.test for e in parse_catalogue(page_markdown(PAGE))}
    assert "tests/test_catalogue.py::test_policy_mistakes_in_the_shell" in fixture_tests()      # the scan finds them
    assert on_page == fixture_tests(), (f"not on the page: {sorted(fixture_tests() - on_page)}; "
                                        f"on the page but not a test: {sorted(on_page - fixture_tests())}")

def test_page_is_in_the_docs():
    page = next(p for p in find_pages(ROOT/"nbs") if p.rel == CATALOGUE_PAGE)
    assert (page.href, page.title) == ("bad_inputs.html", "Bad input: what you see")

def test_one_line_is_checked():
    "The fixture's checks fail on what is not one clear line: a traceback, two error lines, a zero exit, a multi-line message."
    run = lambda rc, err: subprocess.CompletedProcess(["/x/.venv/bin/forge-nb", "run", "c.yaml"], rc, "", err)
    assert seen_line(run(1, "forge-nb: error: x: bad\nforge-nb: stage 'data' failed (job 7); full traceback: l.err\n")) == \
        ("forge-nb run c.yaml", "forge-nb: error: x: bad")
    for rc, err in [(1, "forge-nb: error: x\nforge-nb: error: y\n"), (0, "forge-nb: error: x\n"),
                    (1, "Traceback (most recent call last):\n  File x\nValueError: x\n"), (1, "some library's warning\n")]:
        with pytest.raises(AssertionError): seen_line(run(rc, err))
    assert seen_line(ValueError("x.y: bad (c.yaml:3)")) == ("", "ValueError: x.y: bad (c.yaml:3)")
    two = ValueError("invalid config (2 errors):\n  a: x\n  b: y")
    with pytest.raises(AssertionError): seen_line(two)                      # two problems where one was expected
    assert seen_line(two, problems=2)[1] == "ValueError: invalid config (2 errors):\n  a: x\n  b: y"
    with pytest.raises(AssertionError): seen_line(two, problems=3)
    with pytest.raises(AssertionError): seen_line(ValueError("a: x\nb: y"), problems=1)

CONFTEST_TEST = '''
import os, pytest
from forge_nb.config import ConfigError
def test_typo(bad_input):
    if os.environ.get("SKIP_IT"): pytest.skip("no cluster here")
    bad_input("config", "a typo", ConfigError([("pretrain.stesp", "unknown field", "c.yaml:3")]), names=["c.yaml:3"])
'''

def test_generator_writes_the_page(tmp_path):
    "`forge-nb docs catalogue` in a project of one such test; run again with the test skipped, it keeps the entry."
    from forge_nb.docs import main
    (tmp_path/"tests").mkdir(); (tmp_path/"nbs").mkdir()
    shutil.copy(ROOT/"tests"/"conftest.py", tmp_path/"tests"/"conftest.py")
    (tmp_path/"tests"/"test_x.py").write_text(CONFTEST_TEST)
    assert main(["catalogue", "--root", str(tmp_path)]) == 0
    entries = parse_catalogue(page_markdown(tmp_path/"nbs"/CATALOGUE_PAGE))
    assert [(e.category, e.did, e.message, e.test) for e in entries] == \
        [("config", "a typo", "ConfigError: pretrain.stesp: unknown field  (c.yaml:3)", "tests/test_x.py::test_typo")]
    os.environ["SKIP_IT"] = "1"
    try: assert main(["catalogue", "--root", str(tmp_path)]) == 0
    finally: del os.environ["SKIP_IT"]
    assert parse_catalogue(page_markdown(tmp_path/"nbs"/CATALOGUE_PAGE)) == entries

# ---------------------------------------------------------------- running forge-nb as a user does, in this process

@pytest.fixture
def forge(capsys, monkeypatch):
    "`forge-nb ARGS` run in this process in folder `cwd`: a CompletedProcess as the shell would give (command, status, stdout, stderr)."
    from forge_nb.cli import main
    def run(*args, cwd):
        monkeypatch.chdir(cwd); capsys.readouterr()
        try: rc = main([str(a) for a in args])
        except SystemExit as e: rc = e.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["forge-nb", *map(str, args)], rc, out.out, out.err)
    return run

def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True); path.write_text(textwrap.dedent(text).lstrip("\n")); return path

# ---------------------------------------------------------------- config

def test_config_mistakes_in_the_shell(bad_input, forge, tmp_path):
    write(tmp_path/"steps.yaml", "name: x\npretrain:\n  steps: many\n")
    r = forge("config", "validate", "steps.yaml", cwd=tmp_path)
    bad_input("config", "a word where a number goes", r, names=["pretrain.steps", "steps.yaml:3"])
    write(tmp_path/"stage.yaml", "name: x\nstages: [data, pretrian]\n")
    r = forge("config", "validate", "stage.yaml", cwd=tmp_path)
    bad_input("config", "a misspelt stage name", r, names=["stages.1", "'pretrian'", "stage.yaml:2"])
    write(tmp_path/"indent.yaml", "name: x\npretrain:\n  steps: 3\n   lr: 2\n")
    r = forge("config", "validate", "indent.yaml", cwd=tmp_path)
    bad_input("config", "YAML that does not parse (a line indented too far)", r, names=["not valid YAML", "indent.yaml:4"])
    write(tmp_path/"ok.yaml", "name: x\n")
    r = forge("config", "show", "ok.yaml", "--set", "pretrain.optim.lr=-0.1", cwd=tmp_path)
    bad_input("config", "an out-of-range value in --set", r, names=["pretrain.optim.lr", "> 0", "overrides"])

# ---------------------------------------------------------------- data and sources, in the shell

def _data_config(tmp_path: Path, path: Path, **source) -> Path:
    return write(tmp_path/"d.yaml", f"""
        name: d
        runs_dir: runs
        stages: [data]
        data:
          sources: [{{name: docs, path: {path.name}{''.join(f', {k}: {v}' for k, v in source.items())}}}]
        tokenizer: {{vocab_size: 300, train_bytes: 20000}}
        """)

def test_data_mistakes_in_the_shell(bad_input, forge, tmp_path):
    lines = [json.dumps({"text": f"document {i} " * 20}).encode() + b"\n" for i in range(20)]
    lines[6] = '{"text": "caf\u00e9 au lait"}\n'.encode("latin-1")
    (tmp_path/"latin.jsonl").write_bytes(b"".join(lines))
    r = forge("data", _data_config(tmp_path, tmp_path/"latin.jsonl").name, "--foreground", cwd=tmp_path)
    bad_input("data", "a JSONL source with a Latin-1 line (not UTF-8)", r, names=["source 'docs'", "latin.jsonl:7", "not UTF-8"])
    write(tmp_path/"rows.csv", "id,body\n1,a first document\n2,a second one\n")
    r = forge("data", _data_config(tmp_path, tmp_path/"rows.csv").name, "--foreground", cwd=tmp_path)
    bad_input("data", "a CSV source without the text column", r, names=["source 'docs'", "rows.csv", "'text'"])
    write(tmp_path/"blank.jsonl", "\n\n\n")
    r = forge("data", _data_config(tmp_path, tmp_path/"blank.jsonl").name, "--foreground", cwd=tmp_path)
    bad_input("inputs", "a source file with nothing in it", r, names=["source 'docs'", "blank.jsonl", "empty"])

# ---------------------------------------------------------------- tokenizer and model

def model_folder(path: Path, model_vocab: int | None = None) -> Path:
    "A chat model folder in seconds: a 400-token tokenizer (with the chat template) and a 1-layer model for `model_vocab` tokens."
    from forge_nb.data.tokenizer import train_tokenizer
    from forge_nb.model import hf_config
    texts = [f"question {i} about topic {i % 7}: the answer is {i * 3}" for i in range(300)]
    tok = train_tokenizer(texts, path, vocab_size=400, model_max_length=128)
    hf_config(ModelConfig(depth=1, aspect_ratio=64, head_dim=32, max_seq_len=128), model_vocab or len(tok),
              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(path)
    return path

def _sft_config(tmp_path: Path, base: Path, data: Path) -> Path:
    return write(tmp_path/"sft.yaml", f"""
        name: s
        runs_dir: runs
        stages: [sft]
        sft: {{base_model: {base.name}, dataset: {data.name}, steps: 2, max_seq_len: 64, micro_batch_size: 2}}
        """)

def test_sft_mistakes_in_the_shell(bad_input, forge, tmp_path):
    "Checked before the model loads: the base model's tokenizer, then each SFT row (nothing is trained: config.json only)."
    rows = [json.dumps({"prompt": f"question {i}", "completion": f"the answer is {i}"}) for i in range(20)]
    write(tmp_path/"sft.jsonl", "\n".join(rows[:4] + ['{"prompt": "question 9", "completion": "nine"'] + rows[4:]) + "\n")
    model_folder(tmp_path/"other", model_vocab=300)
    r = forge("sft", _sft_config(tmp_path, tmp_path/"other", tmp_path/"sft.jsonl").name, "--foreground", cwd=tmp_path)
    bad_input("tokenizer", "an SFT base model folder holding another model's tokenizer", r,
              names=["sft.base_model", "its tokenizer has 400 tokens", "has embeddings for 300"])
    model_folder(tmp_path/"base")
    r = forge("sft", _sft_config(tmp_path, tmp_path/"base", tmp_path/"sft.jsonl").name, "--foreground", cwd=tmp_path)
    bad_input("sft", "an SFT row that is not valid JSON", r, names=["sft.jsonl:5", "not valid JSON", "sft.on_bad_record"])

def test_policy_check_with_a_mismatched_model_in_the_shell(bad_input, forge, tmp_path):
    "Sampling from a model folder to try a policy: its tokenizer is checked against the model before anything loads."
    model_folder(tmp_path/"other", model_vocab=300)
    write(tmp_path/"p.yaml", "rules:\n  - {name: short, kind: length, max: 20}\n")
    write(tmp_path/"prompts.jsonl", json.dumps({"prompt": "question 1"}) + "\n")
    r = forge("policy", "check", "p.yaml", "--model", "other", "--prompts", "prompts.jsonl", cwd=tmp_path)
    bad_input("tokenizer", "trying a policy on a model folder holding another model's tokenizer", r,
              names=["other", "its tokenizer has 400 tokens", "has embeddings for 300"])

def test_stage_files_checked_before_submitting(bad_input, forge, tmp_path):
    "`forge-nb launch` (like `forge-nb run` and the launch panel) reads each file a stage will read before anything is submitted: no job waits in a queue to find a bad line."
    model_folder(tmp_path/"base")
    write(tmp_path/"sft.jsonl", json.dumps({"prompt": "q", "completion": "a"}) + "\n" + json.dumps({"prompt": "only"}) + "\n")
    r = forge("launch", _sft_config(tmp_path, tmp_path/"base", tmp_path/"sft.jsonl").name, cwd=tmp_path)
    bad_input("sft", "an SFT row without a completion, found by `forge-nb launch` before submitting", r, names=["sft.jsonl:2", "without a `completion`"])
    assert not (tmp_path/"runs"/"s"/"jobs.json").exists() and not (tmp_path/"runs"/"s"/"sft").exists()
    fake_model(tmp_path/"m")
    write(tmp_path/"p.yaml", "rules:\n  - {name: short, kind: length, max: 20}\n")
    write(tmp_path/"prompts.jsonl", json.dumps({"prompt": "q"}) + "\n" + '{"prompt": "q2",}\n')
    write(tmp_path/"rl.yaml", "name: r\nruns_dir: runs\nstages: [rl]\nrl: {base_model: m, policy: p.yaml, prompts: prompts.jsonl}\n")
    r = forge("launch", "rl.yaml", cwd=tmp_path)
    bad_input("data", "an RL prompts row that is not valid JSON, found by `forge-nb launch` before submitting", r, names=["prompts.jsonl:2", "not valid JSON"])
    assert not (tmp_path/"runs"/"r"/"jobs.json").exists()

@pytest.mark.parametrize("did,row,says", [
    ("an SFT row with a prompt and no completion", {"prompt": "hi"}, "without a `completion`"),
    ("an SFT row with no assistant turn", {"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ("an SFT row with an unknown role", {"messages": [{"role": "bot", "content": "hi"}]}, "unknown role 'bot'"),
    ("an SFT row whose messages are not a list", {"messages": {"role": "user", "content": "hi"}}, "must be a list"),
    ("an SFT row with an empty assistant turn", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
     "empty assistant turn"),
])
def test_sft_rows_in_python(bad_input, tmp_path, did, row, says):
    from forge_nb.sft import read_sft_file
    f = write(tmp_path/"chat.jsonl", json.dumps({"prompt": "q", "completion": "a"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(Exception) as e: read_sft_file(str(f))
    bad_input("sft", did, e, names=["chat.jsonl:2", says])

# ---------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    "The tiny pipeline's data and a 2-step pretraining run with its checkpoint."
    from forge_nb.data.store import run_data_stage
    from forge_nb.demo import tiny_config
    from forge_nb.pretrain import run_pretrain
    d = tmp_path_factory.mktemp("pre")
    cfg = tiny_config(d, steps=2, save_every=2, eval_every=2, eval_batches=1, sample_every=0)
    run_data_stage(cfg, d/"t", log=lambda *a: None)
    run_pretrain(cfg, d/"t", log=lambda *a, **k: None)
    return cfg, d/"t"

def test_checkpoint_from_another_model(bad_input, pretrained_run):
    from forge_nb.config import override
    from forge_nb.pretrain import run_pretrain
    cfg, run = pretrained_run
    deeper = override(cfg, f"model.depth={cfg.model.depth + 1}")
    with pytest.raises(Exception) as e: run_pretrain(deeper, run, log=lambda *a, **k: None)
    bad_input("checkpoint", "resuming pretraining with a deeper model than the checkpoint's", e,
              names=["step_00000002", f"model.depth {cfg.model.depth} → {cfg.model.depth + 1}"])
    with pytest.raises(Exception) as e: run_pretrain(override(cfg, "model.max_seq_len=32"), run, log=lambda *a, **k: None)
    bad_input("tokenizer", "a model context shorter than the token store's sequences", e, names=["model.max_seq_len", "manifest.json"])

# ---------------------------------------------------------------- resources

def test_local_resources_in_the_shell(bad_input, forge, tmp_path):
    from forge_nb.demo import tiny_config
    save_config(tiny_config(tmp_path, steps=2), tmp_path/"t.yaml")
    r = forge("launch", "t.yaml", "--stage", "data", "--set", "resources.nodes=2", cwd=tmp_path)
    bad_input("cluster", "two nodes on the local executor", r, names=["resources.nodes", "nothing was submitted"])
    assert not (tmp_path/"t"/"jobs.json").exists()

PARTS = [dict(name="gpu", nodes=2, gpus_per_node=4, free_gpus=8, cpus=4, mem_gb=8.0, max_time_min=120, state="UP",
              nodes_up=2, default=True, priority_tier=1)]

def test_sbatch_refusal_is_one_line(bad_input, tmp_path, monkeypatch):
    "What the partition table cannot show (a node feature no node has) sbatch refuses: one line, nothing registered."
    import job_probes
    from forge_nb import launch as L
    fake = write(tmp_path/"bin"/"sbatch", "#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Requested node "
                                          "configuration is not available' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    res = ResourcesConfig(cluster="slurm", partition="gpu", constraint="h100")
    with pytest.raises(L.ResourceError) as e:
        L.submit(job_probes.sleep_probe, 1, resources=res, run_dir=tmp_path/"run", partitions=PARTS)
    bad_input("cluster", "a node feature (constraint) no node has: sbatch refuses", e,
              names=["constraint=h100", "Requested node configuration is not available", "nothing was submitted"])
    assert not (tmp_path/"run"/"jobs.json").exists()

@pytest.mark.slurm
def test_sbatch_refusal_on_the_cluster(slurm_cluster, bad_input, forge, tmp_path):
    "What only sbatch knows, on the local SLURM cluster: one line each, exit 2, nothing registered."
    from forge_nb.demo import tiny_config
    save_config(tiny_config(tmp_path, steps=2), tmp_path/"t.yaml")
    for did, setting, needle in [("a node feature (constraint) no node of the SLURM cluster has", "resources.constraint=nosuchfeature",
                                  "constraint=nosuchfeature"),
                                 ("an sbatch option SLURM does not know (sbatch_extra)", 'resources.sbatch_extra={frobnicate: "1"}',
                                  "sbatch_extra.frobnicate")]:
        r = forge("launch", "t.yaml", "--stage", "data", "--cluster", "slurm", "--partition", "cpu", "--set", setting, cwd=tmp_path)
        assert r.returncode == 2, r
        bad_input("cluster", did, r, names=[needle, "sbatch refused the job", "nothing was submitted"])
    assert not (tmp_path/"t"/"jobs.json").exists()

# ---------------------------------------------------------------- preference rows, policies

def fake_model(path: Path) -> Path:
    "A folder that passes the model-folder check (the checks below come before anything loads)."
    path.mkdir(parents=True, exist_ok=True)
    (path/"config.json").write_text("{}"); (path/"tokenizer.json").write_text("{}")
    return path

def test_preference_rows_in_the_shell(bad_input, forge, tmp_path):
    fake_model(tmp_path/"m")
    write(tmp_path/"pairs.jsonl", json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    write(tmp_path/"dpo.yaml", "name: p\nruns_dir: runs\nstages: [rl]\nrl: {method: dpo, base_model: m, pairs: pairs.jsonl}\n")
    r = forge("rl", "dpo.yaml", "--foreground", cwd=tmp_path)
    bad_input("preference", "a preference row without `rejected`", r, names=["rejected", "pairs.jsonl:2"])

POLICY = """
rules:
  - name: no_competitors
    kind: forbidden
    regex: ["(acme|globex"]
"""

@pytest.mark.parametrize("did,text,names", [
    ("a policy rule with a regex that does not compile", POLICY, ["rules.0 (no_competitors).regex", "invalid regex", "p.yaml:4"]),
    ("a policy rule of an unknown kind", "rules:\n  - {name: r, kind: forbiden, terms: [x]}\n", ["rules.0", "forbiden", "p.yaml:2"]),
    ("a policy rule with a negative weight", "rules:\n  - name: r\n    kind: forbidden\n    terms: [x]\n    weight: -1\n",
     ["rules.0 (r).weight", "p.yaml:5"]),
    ("two policy rules with the same name", "rules:\n  - {name: r, kind: forbidden, terms: [x]}\n  - {name: r, kind: forbidden, terms: [y]}\n",
     ["rules.1 (r).name", "p.yaml:3"]),
])
def test_policy_mistakes_in_the_shell(bad_input, forge, tmp_path, did, text, names):
    write(tmp_path/"p.yaml", text)
    r = forge("policy", "validate", "p.yaml", cwd=tmp_path)
    bad_input("policy", did, r, names=names)
