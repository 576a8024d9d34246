"""`optim.name: muon`: Muon for the hidden matrices, AdamW for the rest, as one optimizer that checkpoints and resumes.

- A muon run learns (its loss falls) and its checkpoint holds Muon's momentum for every hidden matrix and AdamW's
  moments for the embedding and the norms, keyed by parameter name.
- The run records in which dtype Muon's Newton–Schulz ran and why (`event: precision`, `summary.json`): fp32 on a
  CPU where bf16 matmul measures slower (the learning above is then fp32's), bf16 where it is native.
- Exact resume: a run restarted from its step-4 checkpoint logs steps 5..8 with the losses of the uninterrupted
  run, bitwise, and writes the same final weights.

    pytest tests/test_muon.py     # about a minute
"""
import json, shutil
from pathlib import Path

import pytest
import torch

from forge_nb.demo import tiny_config
from forge_nb.runs import RunDir, read_metrics


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    from forge_nb.data.store import run_data_stage
    d = tmp_path_factory.mktemp("store")
    run_data_stage(tiny_config(d), d/"t", log=lambda *a: None)
    return d/"t"/"data"


def _run(tmp: Path, name: str, store_dir: Path) -> Path:
    run = tmp/name; run.mkdir(parents=True)
    (run/"data").symlink_to(store_dir, target_is_directory=True)
    return run


def _losses(run: Path) -> dict:
    return {r["step"]: r["loss"] for r in read_metrics(RunDir(run).stage("pretrain").metrics_path) if "loss" in r}


def test_muon_resumes_exactly(tmp_path, store_dir):
    from safetensors.torch import load_file
    from forge_nb.pretrain import run_pretrain
    cfg = tiny_config(tmp_path, steps=8, save_every=4, keep_last=3, eval_every=8, optim={"name": "muon", "lr": 3e-3, "warmup_steps": 2})
    a = _run(tmp_path, "uninterrupted", store_dir)
    run_pretrain(cfg, a, log=lambda *x: None)
    ref = _losses(a)
    assert sorted(ref) == list(range(1, 9))
    assert sum(ref[s] for s in (6, 7, 8)) < sum(ref[s] for s in (1, 2, 3)), f"a muon run should learn: {ref}"

    sa = RunDir(a).stage("pretrain")
    # the run says in which dtype Muon's Newton–Schulz ran, and why; checked against a fresh measurement of this CPU
    prec = [r for r in read_metrics(sa.metrics_path) if r.get("event") == "precision"]
    assert len(prec) == 1 and prec[0]["step"] == 0 and prec[0]["optimizer"] == "muon", prec
    assert json.loads((sa.root/"summary.json").read_text())["precision"]["muon_reason"] == prec[0]["muon_reason"]
    from forge_nb.pretrain import bf16_speedup
    r = bf16_speedup(cache=False)
    if not 0.8 < r < 1.5: assert prec[0]["muon_newton_schulz"] == ("bf16" if r > 1 else "fp32"), (r, prec)
    ck = sa.checkpoint_path(4)
    assert ck.exists(), f"no step-4 checkpoint in {sa.root}"
    # what the checkpoint holds, read from the shard files it wrote (state/*.safetensors: `optim.<param>.<state>` keys)
    from safetensors import safe_open
    shards = sorted((ck/"state").glob("*.safetensors"))
    assert shards, f"no weight/optimizer shards under {ck/'state'}: {sorted(p.name for p in ck.rglob('*'))}"
    keys = set()
    for f in shards:
        with safe_open(str(f), "pt") as h: keys |= set(h.keys())
    kinds = {}
    for k in keys:
        if k.startswith("optim."):
            name, _, state = k[len("optim."):].rpartition(".")
            kinds.setdefault(name, set()).add(state)
    hidden = [n for n in kinds if ".layers." in n and n.endswith("_proj.weight")]
    assert hidden, sorted(kinds)
    assert all(kinds[n] == {"momentum_buffer"} for n in hidden), {n: kinds[n] for n in hidden}    # Muon, every hidden matrix
    assert {"exp_avg", "exp_avg_sq"} <= kinds["model.embed_tokens.weight"]                       # AdamW
    assert {"exp_avg", "exp_avg_sq"} <= kinds["model.norm.weight"]

    b = _run(tmp_path, "resumed", store_dir)               # the same run, restarted from its step-4 checkpoint
    sb = RunDir(b).stage("pretrain")
    shutil.copytree(ck, sb.checkpoint_path(4))
    run_pretrain(cfg, b, log=lambda *x: None)
    got = _losses(b)
    assert sorted(got) == [5, 6, 7, 8], f"the resumed run should start after step 4: {sorted(got)}"
    assert [got[s] for s in (5, 6, 7, 8)] == [ref[s] for s in (5, 6, 7, 8)], (got, ref)
    wa, wb = load_file(str(sa.final/"model.safetensors")), load_file(str(sb.final/"model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
