"""RL stage: bad input stops before any model loads; per-rule rewards reach TRL's logs and rl/metrics.jsonl with the
rules' weights and `when:` scopes; GRPO, DPO and reward-model runs end in loadable folders; resume after SIGKILL;
a 2-rank GRPO job on the local SLURM cluster.

    pytest tests/test_rl.py -m "not slow and not slurm"   # input errors (seconds)
    pytest tests/test_rl.py -m "slow and not slurm"       # short real runs (a few minutes on 2 cores)
    pytest tests/test_rl.py -m slurm                      # needs slurm/dev-cluster up
"""
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest

from forge_nb.config import PipelineConfig, ConfigError

from forge_nb.runs import save_config
from forge_nb.runs import RunDir, read_metrics

ROOT = Path(__file__).resolve().parents[1]
DRIVER = """
import sys
from forge_nb.config import load_config
from forge_nb.rl import run_rl
run_rl(load_config(sys.argv[1]), sys.argv[2], log=lambda *a, **k: None)
"""

# A policy whose true per-rule means are known whatever the model writes: `always` scores 1, `never` scores 0, and
# `tagged` (a constant 1) applies only to prompts tagged `t`; plus a real regex rule.
WIRING_POLICY = """\
rules:
  - {name: always, kind: python, function: "test_rl:always_one", weight: 2.0}
  - {name: never, kind: python, function: "test_rl:const_zero", weight: 0.5}
  - {name: tagged, kind: python, function: "test_rl:tagged_one", weight: 1.0, when: {column: tags, has: t}}
  - {name: no_x, kind: forbidden, regex: ["x"], weight: 1.0}
"""


CALLS = []   # (rule, tags of the row) for every call, in order: the test recounts the reward from them


def always_one(completion, prompt, row): CALLS.append(("always", row.get("tags"))); return 1.0, "one"
def tagged_one(completion, prompt, row): CALLS.append(("tagged", row.get("tags"))); return 1.0, "one"
def const_zero(completion, prompt, row): return 0.0, "zero"


# `task` and `base_model`: the demo's RL task and a tiny chat model, built once per session (conftest.py)


def _cfg(tmp: Path, name: str, **rl) -> PipelineConfig:
    return PipelineConfig(name=name, runs_dir=str(tmp), stages=["rl"], rl=rl)


# --- bad input: errors before any model loads -------------------------------------------------------------------------

def _fake_model(tmp: Path) -> Path:
    d = tmp / "m"; d.mkdir(exist_ok=True)
    (d / "config.json").write_text("{}"); (d / "tokenizer.json").write_text("{}")
    return d


def _raises(cfg, tmp, *needles):
    from forge_nb.rl import run_rl
    with pytest.raises(ConfigError) as e: run_rl(cfg, tmp / "run", log=lambda *a: None)
    for n in needles: assert n in str(e.value), str(e.value)
    assert not (tmp / "run" / "rl").exists(), "nothing may be written before the inputs are valid"
    return e


def test_bad_inputs_fail_before_loading(tmp_path, task, monkeypatch, bad_input):
    import forge_nb.rl as R
    monkeypatch.setattr(R, "load_chat_model", lambda *a, **k: pytest.fail("a model was loaded before validation"))
    m = _fake_model(tmp_path)
    empty = tmp_path / "empty.jsonl"; empty.write_text("")
    e = _raises(_cfg(tmp_path, "a", base_model=str(m), policy=task["policy"], prompts=str(empty)), tmp_path, "empty.jsonl:1", "empty")
    bad_input("inputs", "an empty RL prompts file", e, names=["empty.jsonl:1"])
    nocol = tmp_path / "nocol.jsonl"; nocol.write_text(json.dumps({"prompt": "hi", "context": "[KB-1] x"}) + "\n")
    e = _raises(_cfg(tmp_path, "b", base_model=str(m), policy=task["policy"], prompts=str(nocol)), tmp_path,
                "rules.1 (pricing_disclaimer).when.column", "'tags' is not in", "policy.yaml:10")
    bad_input("policy", "a policy rule scoped by a prompt column the prompts lack", e,
              names=["rules.1 (pricing_disclaimer).when.column", "policy.yaml:10"])
    e = _raises(_cfg(tmp_path, "c", base_model=str(tmp_path / "nope"), policy=task["policy"], prompts=task["prompts"]), tmp_path,
                "rl.base_model", "not a model folder")
    bad_input("inputs", "an RL base model folder that does not exist", e, names=["rl.base_model", "nope"])
    e = _raises(_cfg(tmp_path, "d", base_model=str(m)), tmp_path, "rl.policy", "required for method 'grpo'")
    bad_input("config", "GRPO without a policy and prompts", e, names=["rl.policy", "rl.prompts"], problems=2)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"}) + "\n")
    e = _raises(_cfg(tmp_path, "e", method="dpo", base_model=str(m), pairs=str(pairs)), tmp_path, "pairs.jsonl:2", "`chosen` equals `rejected`")
    bad_input("preference", "a preference row whose chosen and rejected answers are the same", e, names=["pairs.jsonl:2"])
    pairs.write_text(json.dumps({"prompt": "q", "rejected": "b"}) + "\n")
    e = _raises(_cfg(tmp_path, "f", method="reward", base_model=str(m), pairs=str(pairs)), tmp_path, "pairs.jsonl:1", "`chosen`")
    bad_input("preference", "a preference row without `chosen`", e, names=["pairs.jsonl:1", "chosen"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: rm\n    kind: reward_model\n    path: " + str(m) + "\n")
    e = _raises(_cfg(tmp_path, "g", base_model=str(m), policy=str(bad), prompts=task["prompts"]), tmp_path,
                "rules.0 (rm).path", "is not a reward model", "bad.yaml:4")
    bad_input("policy", "a reward-model rule pointing at a plain language model", e, names=["rules.0 (rm).path", "bad.yaml:4"])


def test_config_checks_group_size(bad_input):
    with pytest.raises(ConfigError, match="batch_size: 6 is not a multiple of num_generations") as e:
        from forge_nb.config import validate_config, RLConfig
        validate_config(RLConfig, {"batch_size": 6, "num_generations": 4})
    bad_input("config", "a GRPO batch that is not a multiple of the group size", e, names=["batch_size", "num_generations"])


# --- real runs ---------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_per_rule_rewards_reach_trl_logs(tmp_path, task, base_model, monkeypatch):
    "Every rule is its own reward function: TRL logs each rule's mean (scoped means over applicable prompts only) and the weighted sum."
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    CALLS.clear()
    pol = tmp_path / "wiring.yaml"; pol.write_text(WIRING_POLICY)
    prompts = tmp_path / "p.jsonl"   # half the prompts carry tag `t`
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}", "tags": ["t"] if i % 2 else []}) + "\n" for i in range(16)))
    from forge_nb.rl import run_rl
    cfg = _cfg(tmp_path, "w", base_model=str(base_model), policy=str(pol), prompts=str(prompts), steps=3, lr=1e-4,
               batch_size=8, num_generations=4, max_completion_length=16, beta=0.04,   # beta > 0: TRL logs the KL
               signal_check=False)   # the check would call the rules too (tests/test_rl_signal.py tests it); CALLS counts training only
    s = run_rl(cfg, tmp_path / "w", log=lambda *a: None)
    recs = [r for r in read_metrics(tmp_path / "w" / "rl" / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in recs] == [1, 2, 3]
    for r in recs:
        assert r["rewards/always/mean"] == 1.0 and r["rewards/never/mean"] == 0.0
        assert r.get("rewards/tagged/mean", 1.0) == 1.0   # absent in a step whose prompts were all untagged (TRL logs None)
        assert 0.0 <= r["rewards/no_x/mean"] <= 1.0
        assert all(k in r for k in ("kl", "completions/mean_length", "frac_reward_zero_std"))
    # recount the reward from the calls: per step, 8 `always` calls, then `tagged` only for rows tagged t
    steps, cur = [], None
    for rule, tags in CALLS:
        if rule == "always":
            if cur is None or cur["always"] == 8: cur = {"always": 0, "tagged": 0}; steps.append(cur)
            cur["always"] += 1
        else:
            assert "t" in tags, "a scoped rule was called for a prompt outside its `when:`"
            cur["tagged"] += 1
    assert len(steps) == 3 and all(st["always"] == 8 for st in steps)
    assert 0 < sum(st["tagged"] for st in steps) < 24
    for r, st in zip(recs, steps):   # reward = mean over completions of 2*1 + 0.5*0 + 1*[tagged] + 1*no_x
        assert abs(r["reward"] - (2.0 + st["tagged"] / 8 + r["rewards/no_x/mean"])) < 1e-5, (r, st)
    final = RunDir(tmp_path / "w").stage("rl").final
    assert (final / "COMPLETE").exists() and (final / "config.json").exists()
    # TRL's own log history (checkpoint trainer_state.json) has the same per-rule keys
    st = json.loads((tmp_path / "w" / "rl" / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert any("rewards/tagged/mean" in h for h in st["log_history"])


def _start(cfg: PipelineConfig, run: Path) -> subprocess.Popen:
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "cfg.yaml")
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(run / "cfg.yaml"), str(run)], env=e, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(p, timeout=600) -> str:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"rl process failed ({p.returncode}):\n{out[-4000:]}"
    return out


def _rewards(run: Path) -> list:
    return [(r["step"], r["reward"]) for r in read_metrics(run / "rl" / "metrics.jsonl") if "reward" in r]


@pytest.mark.slow
def test_grpo_resume_after_sigkill(tmp_path, task, base_model):
    "SIGKILL a GRPO run past a checkpoint; the restarted run continues from it: steps 1..N once each, the same rewards."
    from forge_nb.runs import latest_trainer_checkpoint
    cfg = _cfg(tmp_path, "r", base_model=str(base_model), policy=task["policy"], prompts=task["prompts"], steps=8, lr=1e-4,
               batch_size=8, num_generations=4, max_completion_length=16, beta=0.0, save_every=2)
    ref = tmp_path / "ref"; _finish(_start(cfg, ref))
    expected = _rewards(ref)
    assert [s for s, _ in expected] == list(range(1, 9))
    run = tmp_path / "killed"
    p = _start(cfg, run)
    while p.poll() is None:
        ck = latest_trainer_checkpoint(run / "rl" / "checkpoints")
        done = max([s for s, _ in _rewards(run)] or [0])
        if ck is not None and int(ck.name.split("-")[1]) >= 4 and done >= int(ck.name.split("-")[1]) + 1: break
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL); p.wait()
    killed_at = int(latest_trainer_checkpoint(run / "rl" / "checkpoints").name.split("-")[1])
    assert killed_at < 8 and not (run / "rl" / "final" / "COMPLETE").exists()
    from forge_nb.runs import RunDir, checkpoint_step     # the run layout finds the Trainer's checkpoints too, by step
    assert RunDir(run).stage("rl").latest_checkpoint() == latest_trainer_checkpoint(run / "rl" / "checkpoints")
    steps = [checkpoint_step(c) for c in RunDir(run).stage("rl").complete_checkpoints()]
    assert steps[-1] == killed_at and all(s % 2 == 0 for s in steps), steps
    _finish(_start(cfg, run))
    got = _rewards(run)
    assert [s for s, _ in got] == list(range(1, 9)), "resumed metrics have gaps or duplicates"
    assert (run / "rl" / "final" / "COMPLETE").exists()
    assert got == expected, f"resume is not exact: {got} vs {expected}"
    _finish(_start(cfg, run))   # a finished run started again trains no further step
    assert _rewards(run) == expected
    assert json.loads((run / "rl" / "summary.json").read_text())["steps"] == 8


def demo_reward(completion, prompt: str, row: dict) -> float:
    """The reward of forge_nb.rl.DEMO_POLICY, computed here from the rules' text: no AcmeCorp/Globex (whole words, any case);
    "prices may change" when the row is tagged pricing; cites a [KB-..] id of the prompt or its context (1, 0.5 with an
    unknown one too, 0 otherwise; not scored without ids); at most 24 words (1 - excess/24, at least 0). Weights all 1."""
    import re
    text = lambda x: x if isinstance(x, str) else "\n".join(m["content"] if isinstance(m, dict) else str(m) for m in x)
    c = text(completion)
    r = 0.0 if re.search(r"\b(acmecorp|globex)\b", c, re.I) else 1.0
    tags = row.get("tags")
    if tags == "pricing" or (isinstance(tags, list) and "pricing" in tags): r += 1.0 if "prices may change" in c.lower() else 0.0
    idrx = r"\[([A-Za-z][A-Za-z0-9_.:-]*)\]"
    known = set(re.findall(idrx, text(prompt) + "\n" + text(row.get("context") or "")))
    if known:
        cited = set(re.findall(idrx, c))
        r += 1.0 if cited and cited <= known else 0.5 if cited & known else 0.0
    n = len(c.split())
    r += 1.0 if n <= 24 else max(0.0, 1 - (n - 24) / 24)
    return r


@pytest.mark.slow
def test_dpo_and_reward_model_from_policy_pairs(tmp_path, task, base_model):
    "Pairs built from the policy train DPO (a loadable rl/final) and a reward model usable as a policy rule."
    from forge_nb.rl import run_rl
    from forge_nb.policy import load_policy, load_pairs
    common = dict(base_model=str(base_model), policy=task["policy"], prompts=task["prompts"], steps=3, lr=1e-4, batch_size=4,
                  pair_samples=4, pair_margin=0.5, max_completion_length=24, save_every=3)
    s = run_rl(_cfg(tmp_path, "dpo", method="dpo", heldout_prompts=task["heldout"], report_samples=1, **common), tmp_path / "dpo",
               log=lambda *a: None)
    pairs = load_pairs(tmp_path / "dpo" / "rl" / "pairs.jsonl")
    assert s["pairs"] == len(pairs) > 0 and all(p["chosen_reward"] - p["rejected_reward"] >= 0.5 for p in pairs)
    pol = load_policy(task["policy"])
    # recount every stored reward with the demo policy's four rules written out here (not forge_nb.policy's scoring)
    assert [(r.name, r.kind, r.weight) for r in pol.rules] == [("no_competitors", "forbidden", 1.0), ("pricing_disclaimer", "required", 1.0),
                                                              ("cites_kb", "cite", 1.0), ("concise", "length", 1.0)]
    rows = {r["prompt"]: r for r in map(json.loads, open(task["prompts"]))}
    for p in pairs:
        row = rows[p["prompt"]]
        assert abs(demo_reward(p["chosen"], p["prompt"], row) - p["chosen_reward"]) < 1e-9, p
        assert abs(demo_reward(p["rejected"], p["prompt"], row) - p["rejected_reward"]) < 1e-9, p
    assert [r["step"] for r in read_metrics(tmp_path / "dpo" / "rl" / "metrics.jsonl") if "loss" in r] == [1, 2, 3]
    rep = json.loads((tmp_path / "dpo" / "rl" / "report.json").read_text())
    assert set(rep["rules"]) == set(pol.names) and (tmp_path / "dpo" / "rl" / "report.svg").read_text().startswith("<svg")
    s = run_rl(_cfg(tmp_path, "rm", method="reward", pairs=str(tmp_path / "dpo" / "rl" / "pairs.jsonl"), **common), tmp_path / "rm",
               log=lambda *a: None)
    rm = Path(s["final"])
    pol = tmp_path / "rm.yaml"
    pol.write_text(f"rules:\n  - name: rm\n    kind: reward_model\n    path: {rm}\n")
    r = load_policy(pol).score("The Max plan costs 5 EUR [KB-61].", "How much is Max?")["rm"]
    assert 0.0 <= r[0] <= 1.0 and r[1].startswith("reward model:")


@pytest.mark.slurm
@pytest.mark.slow
def test_grpo_two_ranks_on_slurm(slurm_cluster, tmp_path, task, base_model):
    "GRPO through the launcher on 2 ranks (2 nodes × 1 task, gloo): the job finishes, rank 0 writes metrics and rl/final."
    from forge_nb import launch as L
    from forge_nb.config import ResourcesConfig
    cfg = _cfg(tmp_path, "s", base_model=str(base_model), policy=task["policy"], prompts=task["prompts"], steps=3, lr=1e-4,
               batch_size=4, num_generations=4, max_completion_length=16, beta=0.0, save_every=3)
    res = ResourcesConfig(cluster="slurm", partition="cpu", nodes=2, tasks_per_node=1, time_min=10)
    job = L.launch(cfg, "rl", resources=res, run_dir=tmp_path / "s")
    out = job.result(timeout_s=600)
    assert out["steps"] == 3 and out["world_size"] == 2
    recs = [r for r in read_metrics(tmp_path / "s" / "rl" / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert (tmp_path / "s" / "rl" / "final" / "COMPLETE").exists()


@pytest.mark.slow
def test_grpo_preempted_saves_at_the_signalled_step(tmp_path, task, base_model):
    "The preemption signal mid-run: GRPO saves a checkpoint of the step it was at (no periodic save is due), records it, stops; the rerun finishes equal to an undisturbed run."
    from forge_nb.runs import latest_trainer_checkpoint
    cfg = _cfg(tmp_path, "p", base_model=str(base_model), policy=task["policy"], prompts=task["prompts"], steps=8, lr=1e-4,
               batch_size=8, num_generations=4, max_completion_length=16, beta=0.0, save_every=100)
    ref = tmp_path / "ref"; _finish(_start(cfg, ref))
    expected = _rewards(ref)
    run = tmp_path / "preempted"
    p = _start(cfg, run)
    while p.poll() is None and max([s for s, _ in _rewards(run)] or [0]) < 3: time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be signalled"
    os.kill(p.pid, signal.SIGUSR2)             # what SLURM sends before preempting (submitit's checkpoint signal)
    out, _ = p.communicate(timeout=300)
    assert p.returncode != 0 and "preempted" in out, out[-3000:]
    ev = [r for r in read_metrics(run / "rl" / "metrics.jsonl") if r.get("event") == "preempted"]
    assert len(ev) == 1 and ev[0]["checkpoint"], ev
    ck = latest_trainer_checkpoint(run / "rl" / "checkpoints")
    assert ck is not None and int(ck.name.split("-")[1]) == ev[0]["step"] and 3 <= ev[0]["step"] < 8, (ck, ev)
    assert not (run / "rl" / "final" / "COMPLETE").exists()
    _finish(_start(cfg, run))
    assert _rewards(run) == expected, "the run resumed from the preemption checkpoint is not exact"


@pytest.mark.slow
def test_grpo_lora_writes_a_merged_plain_model(tmp_path, task, base_model):
    "GRPO with `rl.lora`: rl/final is a plain model (no adapter files, no lora weights) that loads without peft and differs from the SFT model."
    import torch
    from transformers import AutoModelForCausalLM
    from forge_nb.rl import run_rl
    cfg = _cfg(tmp_path, "l", base_model=str(base_model), policy=task["policy"], prompts=task["prompts"], steps=3, lr=5e-3,
               batch_size=8, num_generations=4, max_completion_length=16, beta=0.0, save_every=100, lora={"enabled": True, "r": 4, "alpha": 8})
    run_rl(cfg, tmp_path / "l", log=lambda *a, **k: None)
    final = RunDir(tmp_path / "l").stage("rl").final
    files = {p.name for p in final.iterdir()}
    assert (final / "COMPLETE").exists() and not {f for f in files if f.startswith("adapter_")}, files
    recs = [r for r in read_metrics(tmp_path / "l" / "rl" / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert any(r["frac_reward_zero_std"] < 1 for r in recs), "every group had equal rewards: no gradient reached the adapter"
    ids = torch.arange(3, 35).unsqueeze(0)
    logits = []
    for folder in (base_model, final):
        m = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
        assert not any("lora" in n for n, _ in m.named_parameters())
        with torch.no_grad(): logits.append(m(input_ids=ids).logits)
    diff = (logits[0] - logits[1]).abs().max().item()
    print(f"GRPO LoRA: max |logit(rl/final) - logit(base)| = {diff:.3e}")
    assert diff > 1e-4, "the merged model equals the base: the adapter did not train or was not merged"
