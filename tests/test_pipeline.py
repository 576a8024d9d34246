"""End to end: the README's main job (`forge-nb demo`), shortened, on this machine through the local launcher."""
import json, subprocess, sys
from pathlib import Path
import pytest

PY = Path(sys.executable)
ROOT = Path(__file__).resolve().parents[1]

@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path):
    # the README's first command, `bash scripts/demo.sh` (set-up, then `forge-nb demo`), shortened by the arguments it passes on
    r = subprocess.run(["bash", str(ROOT/"scripts"/"demo.sh"), "--runs-dir", str(tmp_path), "--name", "e2e", "--steps", "12",
                        "--set", "pretrain.eval_every=6", "--set", "pretrain.save_every=6", "--set", "pretrain.log_every=3",
                        "--set", "tokenizer.train_bytes=300000", "--set", "pretrain.micro_batch_size=4"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[pretrain]" in r.stdout and "finished" in r.stdout
    run = tmp_path/"e2e"
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
