"""SFT stage: a real run from a tiny pretrained model lowers held-out loss; resume after SIGKILL continues from the
checkpoint; 2 ranks (and 2 SLURM nodes) match one process.

    pytest tests/test_sft.py                 # real run, resume, 2 local ranks (a few minutes on 2 busy cores)
    pytest tests/test_sft.py -m slurm        # + 2-node job on the local SLURM cluster
"""
import json, os, signal, socket, subprocess, sys, time
from pathlib import Path

import pytest

from forge_nb.config import PipelineConfig, SourceConfig

from forge_nb.runs import save_config
from forge_nb.runs import RunDir, read_metrics
from forge_nb.demo import tiny_config

ROOT = Path(__file__).resolve().parents[1]
DRIVER = """
import sys
from forge_nb.config import load_config
from forge_nb.sft import run_sft
run_sft(load_config(sys.argv[1]), sys.argv[2], log=print)
"""


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    "The tiny pipeline's data and a 12-step pretrained model (`pretrain/final`), shared by the tests of this module."
    from forge_nb.data.store import run_data_stage
    from forge_nb.pretrain import run_pretrain
    d = tmp_path_factory.mktemp("pre")
    cfg = tiny_config(d, steps=12, save_every=12, eval_every=12)
    run_data_stage(cfg, d/"t", log=lambda *a: None)
    run_pretrain(cfg, d/"t", log=lambda *a, **k: None)
    assert (d/"t"/"pretrain"/"final"/"config.json").exists()
    return cfg, d/"t"


def sft_config(cfg: PipelineConfig, run: Path, **sft) -> PipelineConfig:
    "SFT on examples built from the tiny pipeline's own documents (reference topics and json/*.py docstrings)."
    base = {"base_model": str(run/"pretrain"/"final"), "doc_sources": [s.model_dump() for s in cfg.data.sources],
            "max_seq_len": 64, "micro_batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "steps": 20, "log_every": 1,
            "eval_every": 10, "save_every": 10, "eval_examples": 16, "n_eval_prompts": 2, "max_new_tokens": 12,
            "heldout_fraction": 0.2, **sft}
    return cfg.model_copy(update={"sft": type(cfg.sft)(**base)})


def _start(cfg: PipelineConfig, run: Path, env: dict | None = None) -> subprocess.Popen:
    "run_sft in a fresh Python process (one thread), like a launched job."
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run/"cfg.yaml")
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(run/"cfg.yaml"), str(run)], env=e, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(p: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"sft process failed ({p.returncode}):\n{out[-4000:]}"
    return out


def _losses(run: Path) -> list:
    return [(r["step"], r["loss"]) for r in read_metrics(RunDir(run).stage("sft").metrics_path) if "loss" in r]


def test_sft_run_lowers_heldout_loss(tmp_path, pretrained):
    "A short real SFT run: held-out assistant loss falls; sft/final loads offline and answers; metrics recounted."
    cfg, pre = pretrained
    run = tmp_path/"run"
    _finish(_start(sft_config(cfg, pre, steps=30, save_every=30, eval_every=15), run))
    sd = RunDir(run).stage("sft")
    assert sd.latest_checkpoint() == sd.checkpoints/"checkpoint-30"     # the run layout finds the Trainer's `checkpoint-N`
    ev = json.loads((sd.root/"eval.json").read_text())
    print(f"held-out assistant loss {ev['before']['loss']:.3f} -> {ev['after']['loss']:.3f}, bpb {ev['before']['bpb']:.3f} -> {ev['after']['bpb']:.3f}")
    assert ev["after"]["loss"] < ev["before"]["loss"] - 0.1
    # recount the held-out set from the files the builder wrote: every scored example is a held-out one
    held = [json.loads(l) for l in (sd.root/"examples"/"heldout.jsonl").read_text().splitlines()]
    train = [json.loads(l) for l in (sd.root/"examples"/"train.jsonl").read_text().splitlines()]
    assert held and train and ev["heldout_examples"] == min(16, len(held))
    assert not {(e["source"], e["doc"]) for e in held} & {(e["source"], e["doc"]) for e in train}
    assert [g["prompt"] for g in ev["generations"]] == [e["messages"][0]["content"] for e in held[:2]]
    from transformers import AutoModelForCausalLM, AutoTokenizer
    m = AutoModelForCausalLM.from_pretrained(sd.final, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(sd.final, local_files_only=True)
    assert "{% generation %}" in tok.chat_template and m.config.vocab_size == len(tok)
    recs = read_metrics(sd.metrics_path)
    assert [r["step"] for r in recs if "loss" in r] == list(range(1, 31))
    assert all(r["grad_norm"] is not None and r["tokens_per_s"] > 0 for r in recs if "loss" in r)
    assert all(r["lr"] > 0 for r in recs if "loss" in r and r["step"] > 1)     # warmup starts at 0
    assert sorted(r["step"] for r in recs if "val/sft/loss" in r) == [0, 15, 30]
    assert all(r.get("stage") == "sft" for r in recs)


def test_resume_after_sigkill_continues_from_checkpoint(tmp_path, pretrained):
    "Kill an SFT run with SIGKILL after a checkpoint; run it again: it resumes there and its losses equal an uninterrupted run's."
    cfg, pre = pretrained
    c = sft_config(cfg, pre, steps=16, save_every=4, eval_every=100, keep_last=2)
    ref = tmp_path/"ref"
    _finish(_start(c, ref))
    expected = _losses(ref)
    assert [s for s, _ in expected] == list(range(1, 17))
    run = tmp_path/"killed"
    sd = RunDir(run).stage("sft")
    p = _start(c, run)
    from forge_nb.runs import latest_trainer_checkpoint
    while p.poll() is None:
        ck = latest_trainer_checkpoint(sd.checkpoints)
        if ck is not None and int(ck.name.split("-")[1]) >= 4 and max([s for s, _ in _losses(run)] or [0]) >= int(ck.name.split("-")[1]) + 1: break
        time.sleep(0.02)
    assert p.poll() is None, "the run finished before it could be killed: make it longer"
    os.kill(p.pid, signal.SIGKILL); p.wait()
    killed_at = int(latest_trainer_checkpoint(sd.checkpoints).name.split("-")[1])
    assert killed_at < 16 and not (sd.final/"COMPLETE").exists()
    out = _finish(_start(c, run))
    assert f"resuming from {sd.checkpoints}/checkpoint-{killed_at}" in out, out[-3000:]   # the newest checkpoint the kill left
    got = _losses(run)
    assert [s for s, _ in got] == list(range(1, 17)), "resumed metrics have gaps or duplicates"
    diff = max(abs(a - b) for (_, a), (_, b) in zip(expected, got))
    print(f"killed after checkpoint {killed_at}; max |loss - uninterrupted| over 16 steps = {diff:.2e}")
    assert diff < 1e-4, list(zip(expected, got))
    assert json.loads((sd.root/"summary.json").read_text())["resumed_from"].endswith(f"checkpoint-{killed_at}")


def test_preemption_saves_at_the_signalled_step(tmp_path, pretrained):
    "The preemption signal mid-run (no periodic save due): SFT saves the step it was at, records it, stops; the rerun resumes there and equals an uninterrupted run."
    cfg, pre = pretrained
    c = sft_config(cfg, pre, steps=16, save_every=100, eval_every=100)
    ref = tmp_path/"ref"
    _finish(_start(c, ref))
    expected = _losses(ref)
    run = tmp_path/"preempted"
    sd = RunDir(run).stage("sft")
    p = _start(c, run)
    while p.poll() is None and max([s for s, _ in _losses(run)] or [0]) < 4: time.sleep(0.02)
    assert p.poll() is None, "the run finished before it could be signalled: make it longer"
    os.kill(p.pid, signal.SIGUSR2)                # what SLURM sends before preempting (submitit's checkpoint signal)
    out, _ = p.communicate(timeout=300)
    assert p.returncode != 0 and "preempted" in out, out[-3000:]
    ev = [r for r in read_metrics(sd.metrics_path) if r.get("event") == "preempted"]
    assert len(ev) == 1 and ev[0]["checkpoint"] and 4 <= ev[0]["step"] < 16, ev
    from forge_nb.runs import latest_trainer_checkpoint
    assert latest_trainer_checkpoint(sd.checkpoints).name == f"checkpoint-{ev[0]['step']}" and not (sd.final/"COMPLETE").exists()
    _finish(_start(c, run))
    got = _losses(run)
    assert [s for s, _ in got] == list(range(1, 17)), "resumed metrics have gaps or duplicates"
    assert max(abs(a - b) for (_, a), (_, b) in zip(expected, got)) < 1e-4, list(zip(expected, got))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def test_two_ranks_match_one_process(tmp_path, pretrained):
    "2 ranks (gloo; RANK/WORLD_SIZE/MASTER_* as the launcher exports) × micro-batch 2 = one process with micro-batch 2 × accum 2."
    cfg, pre = pretrained
    single = tmp_path/"single"
    _finish(_start(sft_config(cfg, pre, steps=6, micro_batch_size=2, grad_accum=2, save_every=100, eval_every=100), single))
    dist = tmp_path/"dist"
    c = sft_config(cfg, pre, steps=6, micro_batch_size=2, grad_accum=1, save_every=100, eval_every=100)
    port = str(_free_port())
    procs = [_start(c, dist, {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for r in range(2)]
    for p in procs: _finish(p)
    a, b = _losses(single), _losses(dist)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 7))
    diff = max(abs(x - y) for (_, x), (_, y) in zip(a, b))
    print(f"2 ranks vs one process: max |loss diff| over 6 steps = {diff:.2e}")
    assert diff < 1e-3 * max(x for _, x in a), list(zip(a, b))
    assert json.loads((RunDir(dist).stage("sft").root/"summary.json").read_text())["world_size"] == 2


@pytest.mark.slurm
@pytest.mark.slow
def test_sft_two_nodes_matches_one_process(slurm_cluster, tmp_path, pretrained):
    "launch(cfg, 'sft') on 2 SLURM nodes × 1 task = one process with the same global batch."
    from forge_nb import launch as L
    from forge_nb.config import ResourcesConfig
    cfg, pre = pretrained
    res = ResourcesConfig(cluster="slurm", partition="cpu", time_min=20, env={"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    jobs = {}
    for name, sft, r in [("single", dict(micro_batch_size=2, grad_accum=2), {}),
                         ("two_nodes", dict(micro_batch_size=2, grad_accum=1), dict(nodes=2, tasks_per_node=1))]:
        c = sft_config(cfg, pre, steps=6, save_every=100, eval_every=100, **sft)
        jobs[name] = L.launch(c, "sft", resources=res.model_copy(update=r), run_dir=tmp_path/name)
    for j in jobs.values(): j.result(timeout_s=900)
    a, b = _losses(tmp_path/"single"), _losses(tmp_path/"two_nodes")
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 7))
    diff = max(abs(x - y) for (_, x), (_, y) in zip(a, b))
    print(f"2 nodes vs one process: max |loss diff| over 6 steps = {diff:.2e}")
    assert diff < 1e-3 * max(x for _, x in a)
    assert json.loads((tmp_path/"two_nodes"/"sft"/"summary.json").read_text())["world_size"] == 2


def _logits(folder, ids):
    import torch
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad(): return m(input_ids=ids).logits


def test_lora_run_writes_a_merged_plain_model(tmp_path, pretrained):
    "SFT with `sft.lora.enabled`: sft/final is a plain model (no adapter files) that loads without peft and differs from the base (it trained)."
    import torch
    cfg, pre = pretrained
    run = tmp_path/"lora"
    out = _finish(_start(sft_config(cfg, pre, steps=6, save_every=100, eval_every=100, n_eval_prompts=0,
                                    lora={"enabled": True, "r": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}), run))
    assert "LoRA r=4" in out, out[-2000:]
    sd = RunDir(run).stage("sft")
    files = {p.name for p in sd.final.iterdir()}
    assert not {f for f in files if f.startswith("adapter_")}, files
    assert "config.json" in files and any(f.endswith(".safetensors") for f in files)
    assert json.loads((sd.root/"summary.json").read_text())["lora"] is True
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(sd.final, local_files_only=True)
    assert not any("lora" in n for n, _ in m.named_parameters()), "adapter weights left unmerged"
    ids = torch.arange(3, 35).unsqueeze(0)
    base, tuned = _logits(pre/"pretrain"/"final", ids), _logits(sd.final, ids)
    diff = (base - tuned).abs().max().item()
    print(f"LoRA SFT: max |logit(final) - logit(base)| = {diff:.3e}")
    assert diff > 1e-3, "the merged model equals the base: the adapter did not train or was not merged"
