"""Pretraining stage: learning on a real mixed corpus, exact resume after SIGKILL, DDP/FSDP2 = one process.

    pytest tests/test_pretrain.py            # resume + distributed (about a minute)
    pytest tests/test_pretrain.py -m slow    # + the demo corpus run that must beat the unigram baseline (~4 min)
"""
import json, os, signal, socket, subprocess, sys, time
from pathlib import Path

import pytest

from forge_nb.config import PipelineConfig, DataConfig, SourceConfig, override

from forge_nb.runs import save_config
from forge_nb.runs import RunDir, read_metrics
from forge_nb.demo import tiny_config as _tiny_config

ROOT = Path(__file__).resolve().parents[1]
DRIVER = """
import sys
from forge_nb.config import load_config
from forge_nb.pretrain import run_pretrain
run_pretrain(load_config(sys.argv[1]), sys.argv[2], log=lambda *a, **k: None)
"""


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    "One tiny token store shared by the tests of this module (each run links it as its `data/`)."
    from forge_nb.data.store import run_data_stage
    d = tmp_path_factory.mktemp("store")
    run_data_stage(_tiny_config(d), d/"t", log=lambda *a: None)
    return d/"t"/"data"


def _run_dir(tmp: Path, name: str, store_dir: Path) -> Path:
    run = tmp/name; run.mkdir(parents=True)
    (run/"data").symlink_to(store_dir, target_is_directory=True)
    return run


def _start(cfg: PipelineConfig, run: Path, env: dict | None = None) -> subprocess.Popen:
    "run_pretrain in a fresh Python process (one thread), like a launched job."
    save_config(cfg, run/"cfg.yaml")
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(run/"cfg.yaml"), str(run)], env=e, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(p: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"pretrain process failed ({p.returncode}):\n{out[-4000:]}"
    return out


def _losses(run: Path) -> list:
    return [(r["step"], r["loss"]) for r in read_metrics(RunDir(run).stage("pretrain").metrics_path) if "loss" in r]


def test_resume_after_sigkill_is_exact(tmp_path, store_dir):
    "Kill a run with SIGKILL after a checkpoint, start it again: the loss curve equals an uninterrupted run's, bitwise."
    cfg = _tiny_config(tmp_path, steps=40, save_every=5)
    ref = _run_dir(tmp_path, "uninterrupted", store_dir)
    _finish(_start(cfg, ref))
    expected = _losses(ref)
    assert [s for s, _ in expected] == list(range(1, 41))

    run = _run_dir(tmp_path, "killed", store_dir)
    stage = RunDir(run).stage("pretrain")
    p = _start(cfg, run)
    while p.poll() is None:      # wait until 2+ steps past a checkpoint >= 10 are logged, then kill without warning
        ck = stage.latest_checkpoint()
        if ck is not None and int(ck.name.split("_")[1]) >= 10 and max(s for s, _ in _losses(run)) >= int(ck.name.split("_")[1]) + 2: break
        time.sleep(0.01)
    assert p.poll() is None, "the run finished before it could be killed: make it longer"
    os.kill(p.pid, signal.SIGKILL); p.wait()
    killed_at = int(stage.latest_checkpoint().name.split("_")[1])
    logged = max(s for s, _ in _losses(run))
    assert killed_at < 40 and not (stage.final/"COMPLETE").exists()
    assert logged > killed_at, "the kill should leave metrics past the checkpoint (they must be dropped on resume)"
    _finish(_start(cfg, run))
    got = _losses(run)
    assert [s for s, _ in got] == list(range(1, 41)), "resumed metrics have gaps or duplicates"
    assert got == expected, f"killed at checkpoint {killed_at} (last logged step {logged}): losses differ"
    summary = json.loads((stage.root/"summary.json").read_text())
    assert summary["resumed_from"] == killed_at
    print(f"killed after checkpoint {killed_at} (last logged step before the kill: {logged}); 40 losses bitwise equal")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(tmp_path, store_dir, parallel):
    "2 ranks (gloo, RANK/WORLD_SIZE/MASTER_* set) × micro-batch 2 give one process's losses with micro-batch 2 × accum 2."
    single = _run_dir(tmp_path, "single", store_dir)
    _finish(_start(_tiny_config(tmp_path, steps=8, micro_batch_size=2, grad_accum=2, parallel="none"), single))
    dist = _run_dir(tmp_path, parallel, store_dir)
    cfg = _tiny_config(tmp_path, steps=8, micro_batch_size=2, grad_accum=1, parallel=parallel)
    port = str(_free_port())
    procs = [_start(cfg, dist, {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for r in range(2)]
    for p in procs: _finish(p)
    a, b = _losses(single), _losses(dist)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 9))
    diffs = [abs(x - y) for (_, x), (_, y) in zip(a, b)]
    print(f"{parallel}: max |loss - single| over 8 steps = {max(diffs):.2e}")
    assert max(diffs) < 1e-4 * max(x for _, x in a), f"{parallel} vs one process: {list(zip(a, b))}"
    s1 = json.loads((RunDir(single).stage("pretrain").root/"summary.json").read_text())
    s2 = json.loads((RunDir(dist).stage("pretrain").root/"summary.json").read_text())
    assert s2["world_size"] == 2
    for src, v in s1["val_bpb"].items(): assert abs(v - s2["val_bpb"][src]) < 1e-3 * v
    # the 2-rank checkpoint resumes in one process (full state dicts keyed by name; the loader reshards exactly)
    longer = _tiny_config(tmp_path, steps=10, micro_batch_size=2, grad_accum=2, parallel="none")
    _finish(_start(longer, single)); _finish(_start(longer, dist))
    a, b = _losses(single), _losses(dist)
    assert [s for s, _ in b] == list(range(1, 11))
    assert max(abs(x - y) for (_, x), (_, y) in zip(a[8:], b[8:])) < 1e-4 * a[8][1], list(zip(a[8:], b[8:]))


@pytest.mark.heavy         # about six minutes on 2 cores: `scripts/test.sh --heavy` (test_muon checks on every commit that a model learns)
def test_demo_corpus_beats_unigram(tmp_path):
    """A tiny Llama trained for ~3 minutes (800 steps of 4,096 tokens) on the demo corpus (Python's stdlib: module source, the reference manual,
    docstrings) reaches a validation bits-per-byte clearly below the unigram baseline of every source.

    The baseline is the entropy of each source's val tokens under their own unigram distribution (in-sample, so it
    flatters the baseline), divided by the source's bytes per token; model and baseline score the same tokens (the
    whole val split: eval_batches covers it)."""
    from forge_nb.demo import demo_config
    from forge_nb.data.store import run_data_stage, TokenStore
    from forge_nb.pretrain import run_pretrain
    cfg = demo_config(runs_dir=str(tmp_path), overrides=[
        "tokenizer.vocab_size=1024", "data.seq_len=128", "data.val_docs=32", "data.max_epochs=16", "model.max_seq_len=128", "model.depth=2",
        "pretrain.steps=800", "pretrain.micro_batch_size=32", "pretrain.log_every=50", "pretrain.eval_every=800",
        "pretrain.eval_batches=1000", "pretrain.save_every=400", "pretrain.optim.lr=5e-3", "pretrain.optim.warmup_steps=30"])
    run = RunDir.for_config(cfg).create()
    t0 = time.time()
    run_data_stage(cfg, run.root, log=lambda *a: None)
    store = TokenStore(run.root/"data")
    res = run_pretrain(cfg, run.root, log=lambda *a: None)
    print(f"\ndemo corpus: {res['steps']} steps, {res['tokens']:,} tokens, median {res['tokens_per_s']:,.0f} tokens/s, "
          f"{time.time() - t0:.0f} s with the data stage")
    for src, bpb in res["val_bpb"].items():
        uni = res["unigram_bpb"][src]
        print(f"  {src:10s} val bpb {bpb:.3f}   unigram bpb {uni:.3f}   ({store.num_sequences(src)} val sequences, "
              f"{store.val_bytes_per_token[src]:.2f} bytes/token)")
        assert bpb < 0.85 * uni, f"{src}: val bpb {bpb:.3f} is not clearly below the unigram baseline {uni:.3f}"
    from transformers import AutoModelForCausalLM, AutoTokenizer
    m = AutoModelForCausalLM.from_pretrained(res["final"], local_files_only=True)
    tok = AutoTokenizer.from_pretrained(res["final"], local_files_only=True)
    assert m.num_parameters() > 1e5 and tok.decode(tok("def f(x):")["input_ids"]).endswith("def f(x):")
