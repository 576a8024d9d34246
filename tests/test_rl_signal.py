"""Learning-signal checks of the RL stage (forge_nb.rl_signal) on a real tiny chat model: a policy no completion of
the start model meets is refused before training, in seconds, with its one-paragraph advice; the demo policy passes
the check and trains, with distinct-2 and the held-out loss in the metrics.

    pytest tests/test_rl_signal.py -m slow -s     # -s prints the check's figures and the time the refusal took
"""
import io, json, time
from pathlib import Path

import pytest

from forge_nb.config import PipelineConfig, ConfigError
from forge_nb.runs import read_metrics

PHRASE = "per the enclosed notarised affidavit"
IMPOSSIBLE = f"""\
name: impossible
rules:
  - name: affidavit
    kind: required
    phrases: ["{PHRASE}"]
  - name: no_competitors
    kind: forbidden
    terms: [Initech]
"""


# `task` and `base_model`: the demo's RL task and a tiny chat model, built once per session (conftest.py)


def _cfg(tmp: Path, name: str, **rl) -> PipelineConfig:
    common = dict(steps=3, lr=1e-4, batch_size=8, num_generations=4, max_completion_length=16, beta=0.0, save_every=1)
    return PipelineConfig(name=name, runs_dir=str(tmp), stages=["rl"], rl={**common, **rl})


@pytest.mark.slow
def test_impossible_policy_stops_before_training(tmp_path, task, base_model):
    "A policy the start model never meets: NoLearningSignal before any step, no checkpoint, the figures on disk, one CLI line."
    from forge_nb.rl import run_rl
    from forge_nb.rl_signal import NoLearningSignal
    from forge_nb.cli import report_error
    pol = tmp_path / "impossible.yaml"; pol.write_text(IMPOSSIBLE)
    run = tmp_path / "run"
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        run_rl(_cfg(tmp_path, "x", base_model=str(base_model), policy=str(pol), prompts=task["prompts"]), run, log=lambda *a: None)
    took = time.perf_counter() - t0
    print(f"\nimpossible policy refused in {took:.1f} s (model load + 16 prompts x 4 samples + scoring; bench/bench_signal.py "
          "measures it against training anyway)")
    assert isinstance(e.value, NoLearningSignal)
    msg = str(e.value)
    for needle in ("rl.signal_check: no learning signal: 0 of 16 prompt groups", "never met: affidavit (64 completions)",
                   "always met: no_competitors (64 completions)", "SFT the start model", "partial credit",
                   "rl.num_generations (now 4)", "rl.temperature (now 1)", "rl.signal_check: false", "signal_check.json"):
        assert needle in msg, (needle, msg)
    # nothing trained: recounted from the run directory, not from the exception
    rl = run / "rl"
    assert not any((rl / "checkpoints").iterdir()), "a checkpoint was written"
    assert not (rl / "final").exists() and not (rl / "summary.json").exists()
    recs = read_metrics(rl / "metrics.jsonl")
    assert not [r for r in recs if "event" not in r], f"training records were written: {recs}"
    ev = [r for r in recs if r.get("event") == "signal_check"]
    assert len(ev) == 1 and ev[0]["ok"] is False and ev[0]["groups_with_spread"] == 0
    fig = json.loads((rl / "signal_check.json").read_text())
    assert (fig["prompts"], fig["num_generations"], fig["groups_with_spread"], fig["ok"]) == (16, 4, 0, False)
    comps = [c for s in fig["samples"] for c in s["completions"]]
    assert len(comps) == 16 and not any(PHRASE in c.lower() for c in comps)   # the samples kept indeed never say it
    # the command line prints it as one line (exit status 2: a setting to change)
    err = io.StringIO()
    assert report_error(e.value, err=err) == 2
    out = err.getvalue().strip().splitlines()
    assert len(out) == 1 and out[0].startswith("forge-nb: error: rl.signal_check: no learning signal"), out


@pytest.mark.slow
def test_demo_policy_passes_and_trains_with_signal_metrics(tmp_path, task, base_model):
    "The demo policy has reward spread on the tiny model: the check passes, training runs, distinct-2 and the held-out loss are logged."
    from forge_nb.rl import run_rl
    logged = []
    cfg = _cfg(tmp_path, "d", base_model=str(base_model), policy=task["policy"], prompts=task["prompts"], steps=2, save_every=2,
               heldout_chat=task["heldout_chat"], eval_every=1)
    run_rl(cfg, tmp_path / "d", log=logged.append)
    print("\n" + next(line for line in logged if line.startswith("signal check:")))
    rl = tmp_path / "d" / "rl"
    fig = json.loads((rl / "signal_check.json").read_text())
    assert fig["ok"] and fig["groups_with_spread"] >= 2 and fig["prompts"] == 16
    print(json.dumps({k: fig[k] for k in ("groups_with_spread", "spread_share", "pass_rate", "reward", "seconds")}),
          json.dumps({n: v["pass_rate"] for n, v in fig["rules"].items()}))
    recs = read_metrics(rl / "metrics.jsonl")
    steps = [r for r in recs if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(0 < r["completions/distinct_2"] <= 1 for r in steps)
    assert [r["step"] for r in recs if "heldout_chat_loss" in r] == [0, 1]   # step 0 and every step but the last
    assert (rl / "final" / "COMPLETE").exists()
