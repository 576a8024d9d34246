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
    assert list(rep["rules"]) == ["cites_source", "concise", "grounded"]
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
