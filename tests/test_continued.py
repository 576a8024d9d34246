"""Continued pretraining from a local Hugging Face model folder (`model.init_from`).

A small Llama is made here from a config, with a byte-level BPE tokenizer trained here (the `tokenizers` library
directly, with its own special token, not forge_nb's), saved with `save_pretrained`. Then:
- the data stage tokenizes with that model's tokenizer, and says so (log, manifest, mix report);
- the loss the pretraining stage logs at its first step equals the loss of that model on the same batch,
  computed here with transformers directly, each packed document run on its own;
- the result is a plain Hugging Face folder that loads, with the model's architecture and tokenizer;
- `model.max_seq_len` is the training context: up to the model's `max_position_embeddings` it is honoured, beyond
  it (or `data.seq_len` beyond it) is refused;
- a token store built with another tokenizer, a sequence length beyond the model's, and a folder that is missing
  or is not a model are one-line errors naming the field and the file, before any training (and before the
  launcher submits anything).

    pytest tests/test_continued.py     # about a minute
"""
import hashlib, json, sysconfig
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from forge_nb.config import override
from forge_nb.demo import tiny_config
from forge_nb.runs import RunDir, read_metrics

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    "A small Llama folder: random weights from a config, a tokenizer trained here on stdlib text, an untied head."
    from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    d = tmp_path_factory.mktemp("base")/"llama"
    texts = [f.read_text() for f in sorted((STDLIB/"email").glob("*.py"))]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=700, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    cfg = LlamaConfig(vocab_size=768, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
                      eos_token_id=hf_tok.eos_token_id, bos_token_id=hf_tok.bos_token_id)
    torch.manual_seed(123)
    LlamaForCausalLM(cfg).save_pretrained(d)
    hf_tok.save_pretrained(d)
    return d


def _cfg(tmp: Path, base: Path, name: str, **pretrain):
    "The tiny data + pretrain pipeline, continuing from `base` (the tokenizer section is ignored then)."
    cfg = tiny_config(tmp, name, steps=4, save_every=4, eval_every=4, **pretrain)
    return override(cfg, f"model.init_from={base}")


def _documents(batch, r: int) -> list:
    "The token ids of each document packed in row `r` (position ids restart at 0 at each one; padding dropped)."
    pos, used = batch["position_ids"][r], int((batch["labels"][r] != -100).sum())
    starts = (pos[:used] == 0).nonzero().flatten().tolist() + [used]
    return [batch["input_ids"][r, a:b].tolist() for a, b in zip(starts[:-1], starts[1:])]


def _independent_loss(model, batch) -> float:
    "Mean next-token loss of `batch` under `model`, each packed document run alone (position ids restart at 0)."
    ids, pos, lab = batch["input_ids"], batch["position_ids"], batch["labels"]
    total, count = 0.0, 0
    with torch.no_grad():
        for r in range(ids.shape[0]):
            starts = (pos[r] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
            target = torch.cat([lab[r, 1:], torch.tensor([-100])])           # token t predicts the row's next token
            for a, b in zip(starts[:-1], starts[1:]):
                logits = model(input_ids=ids[r:r + 1, a:b]).logits[0]
                y = target[a:b]
                total += float(F.cross_entropy(logits, y, ignore_index=-100, reduction="sum")); count += int((y != -100).sum())
    return total / count


def test_continued_pretraining_starts_from_the_model(tmp_path, base_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from forge_nb.data.store import run_data_stage, TokenStore
    from forge_nb.pretrain import run_pretrain
    cfg = _cfg(tmp_path, base_model, "cont")
    run = tmp_path/"cont"
    lines = []
    run_data_stage(cfg, run, log=lines.append)
    store = TokenStore(run/"data")
    fp = hashlib.blake2b((base_model/"tokenizer.json").read_bytes(), digest_size=16).hexdigest()
    tokm = store.manifest["tokenizer"]
    assert tokm["from"] == f"model.init_from: {base_model}" and tokm["tokenizer_json_blake2b"] == fp
    assert any("the model's own" in l and str(base_model) in l for l in lines), lines
    assert f"model.init_from: {base_model}" in (run/"data"/"mix_report.md").read_text()
    reference = AutoTokenizer.from_pretrained(base_model)
    assert store.vocab_size == len(reference) == 700
    rows = [store.loader(micro_batch_size=store.num_sequences(), shuffle=False).__next__()["input_ids"]]
    rows += [b["input_ids"] for s in store.val_sources for b in store.val_loader(s, 64)]
    stream = " " + " ".join(" ".join(map(str, r.tolist())) for rr in rows for r in rr) + " "
    texts = [json.loads(l)["text"] for l in (tmp_path/"ref.jsonl").read_text().splitlines()]
    heads = [reference(t, add_special_tokens=False).input_ids[:8] for t in texts]
    found = sum(f" {' '.join(map(str, h))} " in stream for h in heads)
    # the 40k-token budget draws some of the 60 reference documents; 8 ids in a row match by chance with odds ~700^-8
    assert found >= 2, f"only {found} of {len(texts)} documents' first 8 tokens (this tokenizer's encoding) are in the store"

    run_pretrain(cfg, run, log=lambda *a: None)
    first = next(r for r in read_metrics(RunDir(run).stage("pretrain").metrics_path) if r.get("step") == 1 and "loss" in r)
    batch = next(store.loader(micro_batch_size=cfg.pretrain.micro_batch_size, seed=cfg.data.seed))
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32).eval()
    expected = _independent_loss(base, batch)
    print(f"step-1 loss logged {first['loss']:.6f}, the model's own on that batch {expected:.6f}")
    assert first["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-5), (first["loss"], expected)

    final = RunDir(run).stage("pretrain").final
    m = AutoModelForCausalLM.from_pretrained(final, trust_remote_code=False).eval()
    assert type(m).__name__ == "LlamaForCausalLM"
    c, b = m.config, base.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_key_value_heads, c.intermediate_size, c.vocab_size, c.tie_word_embeddings) == \
           (b.hidden_size, b.num_hidden_layers, b.num_key_value_heads, b.intermediate_size, b.vocab_size, False)
    assert hashlib.blake2b((final/"tokenizer.json").read_bytes(), digest_size=16).hexdigest() == fp
    moved = [float((x - y).detach().abs().max()) for x, y in zip(m.parameters(), base.parameters())]
    assert min(moved) > 0, "every weight should have been trained"
    assert _independent_loss(m, batch) < expected, "4 steps on this data should lower the loss of its first batch"


def test_mismatches_are_one_line_errors_before_training(tmp_path, base_model, bad_input):
    from forge_nb.data.sources import DataError
    from forge_nb.data.store import run_data_stage
    from forge_nb.launch import missing_inputs
    from forge_nb.pretrain import run_pretrain
    # a token store made with a trained tokenizer, then continued pretraining on it: refused by its fingerprint
    plain = tiny_config(tmp_path, "plain", steps=4)
    run = tmp_path/"plain"
    run_data_stage(plain, run, log=lambda *a: None)
    cont = override(plain, f"model.init_from={base_model}")
    with pytest.raises(ValueError) as e: run_pretrain(cont, run, log=lambda *a: None)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("model.init_from: the token store") and str(run/"data"/"manifest.json") in msg
    assert "another tokenizer" in msg and "rerun the data stage" in msg
    assert not (run/"pretrain"/"metrics.jsonl").exists(), "nothing may be trained"

    # sequences longer than the model's context: the data stage refuses before reading anything
    long = override(_cfg(tmp_path, base_model, "long"), "data.seq_len=256")
    with pytest.raises(DataError, match=r"^data\.seq_len: 256 is beyond the model's max_position_embeddings 128 \(.*config\.json\)$"):
        run_data_stage(long, tmp_path/"long", log=lambda *a: None)
    assert not (tmp_path/"long"/"data").exists()

    # model.max_seq_len is the training context under init_from too: beyond the model's positions it is refused (the
    # default 1024 here), and sequences longer than it are refused, naming the field and the limit, before any work
    wide = override(_cfg(tmp_path, base_model, "wide"), "model.max_seq_len=1024")
    with pytest.raises(DataError) as e: run_data_stage(wide, tmp_path/"wide", log=lambda *a: None)
    assert str(e.value) == (f"model.max_seq_len: 1024 is beyond the model's max_position_embeddings 128 "
                            f"({base_model/'config.json'}): set model.max_seq_len <= 128")
    bad_input("tokenizer", "`model.max_seq_len` beyond the max_position_embeddings of the `model.init_from` model", e,
              names=["model.max_seq_len", "128", "config.json"])
    tight = override(_cfg(tmp_path, base_model, "tight"), "model.max_seq_len=48")        # the store's sequences are 64
    with pytest.raises(ValueError, match=r"^data\.seq_len: 64 is beyond model\.max_seq_len 48, the training context continuing "
                                         r"from .*: set data\.seq_len <= 48, or model\.max_seq_len >= 64 \(up to 128\)$"):
        run_pretrain(tight, tmp_path/"tight", log=lambda *a: None)
    assert not (tmp_path/"wide"/"data").exists() and not (tmp_path/"tight"/"pretrain").exists()
    assert any(p.startswith("model.max_seq_len: 1024") for p in missing_inputs(wide, ["data", "pretrain"], tmp_path/"wide"))

    # a folder that is missing, or is not a model (a tokenizer alone): named, with its file
    gone = override(plain, f"model.init_from={tmp_path/'no-model'}")
    with pytest.raises(DataError, match=r"^model\.init_from: .*no-model does not exist"):
        run_data_stage(gone, tmp_path/"gone", log=lambda *a: None)
    tok_only = tmp_path/"tok-only"; tok_only.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"): (tok_only/f).write_bytes((base_model/f).read_bytes())
    with pytest.raises(ValueError, match=r"^model\.init_from: .*tok-only/config\.json is missing"):
        run_pretrain(override(plain, f"model.init_from={tok_only}"), run, log=lambda *a: None)

    # the launcher refuses the same before submitting
    assert any(p.startswith("data.seq_len: 256") for p in missing_inputs(long, ["data", "pretrain"], tmp_path/"long"))
    assert missing_inputs(cont, ["data", "pretrain"], run) == []
