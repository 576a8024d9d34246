"""Evaluation (forge_nb.evaluation): the recorded split recounted from its files, questions fair by construction, the
null model at chance on >= 200 questions, forge_nb's bits per byte equal to lm-eval's, retrieval recall recounted, and
`forge-nb eval` numbers reproduced by the `lm_eval` command run by hand.

    pytest tests/test_eval.py            # a few minutes on 2 busy cores (lm-eval scoring of tiny models)
"""
import json, math, os, re, shlex, subprocess, sys
from pathlib import Path

import pytest

from forge_nb.config import PipelineConfig, SourceConfig, ModelConfig
from forge_nb.runs import read_jsonl, save_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def rows(path): return [r for _, r in read_jsonl(path)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    "The demo's reference topics and 3000 docstrings, split; a BPE trained on the knowledge split; a tiny Llama; the benchmark."
    from forge_nb.demo import prepare_demo_corpus
    from forge_nb.data.tokenizer import train_tokenizer
    from forge_nb.model import build_model
    from forge_nb.evaluation import split_run, read_split, split_dir, build_benchmark
    d = tmp_path_factory.mktemp("eval")
    corpus = prepare_demo_corpus(d/"corpus", max_docstrings=3000)
    srcs = [SourceConfig(name=k, path=corpus[k]) for k in ("reference", "docstrings")]
    base = d/"models"/"base"
    cfg = PipelineConfig(name="ev", runs_dir=str(d/"runs"), data={"sources": [s.model_dump() for s in srcs]},
                         eval={"n_items": 400, "bpb_docs": 8, "candidates": [str(base)]})
    rd = d/"runs"/"ev"
    split_run(cfg, rd)
    tok = train_tokenizer((x["text"] for x in read_split(split_dir(rd), "knowledge")), vocab_size=1024)
    import torch
    torch.manual_seed(0)
    build_model(ModelConfig(depth=2, aspect_ratio=64, head_dim=64, max_seq_len=128), len(tok), bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(base)
    tok.save_pretrained(base)
    bench = build_benchmark(cfg, rd, tok, log=lambda *a: None)
    return {"cfg": cfg, "dir": rd, "tok": tok, "base": base, "bench": bench, "srcs": srcs}


def test_split_is_recorded_and_questions_come_from_heldout_documents(run):
    from forge_nb.data.sources import iter_documents
    from forge_nb.evaluation import doc_id, is_heldout
    from forge_nb.data.sft_examples import build_sft_examples
    from forge_nb.evaluation import knowledge_sources
    sd = run["dir"]/"eval"/"split"
    parts = {p: [r for f in sorted((sd/p).glob("*.jsonl")) for r in rows(f)] for p in ("knowledge", "heldout")}
    know, held = {r["id"] for r in parts["knowledge"]}, {r["id"] for r in parts["heldout"]}
    assert not know & held
    every = {doc_id(s.name, t) for s in run["srcs"] for t in iter_documents(s)}     # the sources read again
    assert know | held == every
    assert all(is_heldout(i, 0.1) for i in held) and not any(is_heldout(i, 0.1) for i in know)
    n, k = len(every), len(held)
    assert abs(k / n - 0.1) < 3 * math.sqrt(0.1 * 0.9 / n), (k, n)
    items = rows(run["dir"]/"eval"/"benchmark"/"mc.jsonl")
    assert items and all(it["doc_id"] in held for it in items)
    for it in items:   # the question is a slice of its own held-out document
        text = next(r["text"] for r in parts["heldout"] if r["id"] == it["doc_id"])
        a = int(it["id"].rsplit("#", 1)[1])
        assert text[a:a + len(it["answer"])] == it["answer"] and text[:a].rstrip().endswith(it["context"]), it["id"]
    # SFT examples built from the knowledge split never hold a question with its answer
    stats = build_sft_examples(knowledge_sources(sd), run["dir"]/"sft_examples", heldout_fraction=0.0)
    sft_text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows(run["dir"]/"sft_examples"/"train.jsonl"))
    assert stats["train"] > 100
    leaked = [it["id"] for it in items if json.dumps(it["context"][-60:] + " " + it["answer"], ensure_ascii=False)[1:-1] in sft_text]
    assert not leaked, leaked[:5]


def test_choices_match_the_answer_in_kind_and_token_length(run):
    items, tok = rows(run["dir"]/"eval"/"benchmark"/"mc.jsonl"), run["tok"]
    docs = {r["id"]: r["text"] for p in ("knowledge", "heldout") for f in (run["dir"]/"eval"/"split"/p).glob("*.jsonl") for r in rows(f)}
    assert len(items) >= 200
    for it in items:
        assert it["choices"][it["gold"]] == it["answer"] and len(set(it["choices"])) == len(it["choices"]) == 4
        assert len({len(tok(" " + c, add_special_tokens=False)["input_ids"]) for c in it["choices"]}) == 1, it["choices"]
        for c in it["choices"]:
            assert not re.search(r"(?<![A-Za-z0-9_])" + re.escape(c) + r"(?![A-Za-z0-9_])", it["context"]), (c, it["id"])
            if c != it["answer"]: assert any(c in t for i, t in docs.items() if i != it["doc_id"]), (c, it["id"])


@pytest.fixture(scope="module")
def null(run):
    from forge_nb.evaluation import null_model
    return null_model(run["base"], run["dir"]/"null-test", seed=0)


def test_null_model_scores_chance(run, null):
    "A random-weight model with the same tokenizer is within two standard errors of chance on >= 200 questions."
    from forge_nb.evaluation import lm_eval_scores
    n = len(rows(run["dir"]/"eval"/"benchmark"/"mc.jsonl"))
    assert n >= 200
    r = lm_eval_scores(null, ["forge_mc"], run["dir"]/"eval"/"tasks")["forge_mc"]
    se = math.sqrt(0.25 * 0.75 / n)
    print(f"null model: accuracy {r['acc']:.4f} on {n} questions, chance 0.25, standard error {se:.4f}, z {(r['acc'] - 0.25) / se:+.2f}")
    assert r["n"] == n
    assert abs(r["acc"] - 0.25) <= 2 * se, (r, se)


def test_the_chance_check_fails_on_naive_questions(run, null, tmp_path):
    """The check above can fail: built without the token-length and not-in-context rules, the questions whose answer the
    context mentions put the null model well above chance (its residual stream carries the context's embeddings)."""
    from forge_nb.evaluation import read_split, split_dir, span_pool, build_items, write_jsonl, write_task, task_config, lm_eval_scores
    held, know = read_split(split_dir(run["dir"]), "heldout"), read_split(split_dir(run["dir"]), "knowledge")
    naive = build_items(held, span_pool(held + know, run["tok"]), run["tok"], n_items=2000, max_per_doc=20,
                        match_tokens=False, exclude_context=False)
    mentioned = [it for it in naive if re.search(r"(?<![A-Za-z0-9_])" + re.escape(it["answer"]) + r"(?![A-Za-z0-9_])", it["context"])]
    write_jsonl(tmp_path/"naive.jsonl", mentioned); write_task(tmp_path/"tasks", task_config("naive_mc", tmp_path/"naive.jsonl", "mc"))
    r = lm_eval_scores(null, ["naive_mc"], tmp_path/"tasks")["naive_mc"]
    z = (r["acc"] - 0.25) / math.sqrt(0.25 * 0.75 / r["n"])
    print(f"null model on naive questions whose answer the context mentions: accuracy {r['acc']:.4f} on {r['n']}, z {z:+.2f}")
    assert r["n"] >= 60 and z > 2, r


def test_forge_bpb_equals_lm_eval_bits_per_byte(run):
    import torch
    from transformers import AutoModelForCausalLM
    from forge_nb.evaluation import document_bpb, lm_eval_scores
    tasks = [t for t in run["bench"]["tasks"] if t.startswith("forge_bpb_")]
    assert sorted(tasks) == ["forge_bpb_docstrings", "forge_bpb_reference"]
    scores = lm_eval_scores(run["base"], tasks, run["dir"]/"eval"/"tasks")
    model = AutoModelForCausalLM.from_pretrained(run["base"], dtype=torch.float32)
    for t in tasks:
        docs = [r["text"] for r in rows(run["dir"]/"eval"/"benchmark"/f"{t.removeprefix('forge_')}.jsonl")]
        lens = [len(run["tok"](d, add_special_tokens=False)["input_ids"]) for d in docs]
        if t == "forge_bpb_reference": assert max(lens) > 2 * 128   # several context windows per document
        mine, theirs = document_bpb(model, run["tok"], docs)["bpb"], scores[t]["bits_per_byte"]
        print(f"{t}: forge_nb {mine:.9f} lm-eval {theirs:.9f} relative difference {abs(mine - theirs) / theirs:.2e}")
        assert abs(mine - theirs) <= 1e-6 * theirs, (t, mine, theirs)


def test_retrieval_recall_recounted(run):
    from forge_nb.evaluation import passages, retrieve, recall_at_k
    rag = rows(run["dir"]/"eval"/"benchmark"/"mc_rag.jsonl")
    b = json.loads((run["dir"]/"eval"/"benchmark.json").read_text())["retrieval"]
    assert all(len(r["retrieved"]) == b["k"] == 2 for r in rag)
    recount = sum(r["doc_id"] in r["retrieved"] for r in rag) / len(rag)
    assert recount == pytest.approx(b["recall_at_k"]) and recount > 0.5
    know = [r for f in (run["dir"]/"eval"/"split"/"knowledge").glob("*.jsonl") for r in rows(f)]
    ps = passages(know, 400)
    assert recall_at_k(rag, ps, retrieve(ps, [r["context"] for r in rag], 2)) == 0.0   # a held-out document is not in a knowledge-only index


def test_forge_nb_eval_number_reproduced_by_lm_eval_by_hand(run, tmp_path):
    "`forge-nb eval` prints the table and an `lm_eval` command; run by hand, that command gives the table's number."
    cfg_file = tmp_path/"ev.yaml"
    save_config(run["cfg"], cfg_file)
    r = subprocess.run([str(BIN/"forge-nb"), "eval", str(cfg_file), "--limit", "40"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^base\s+none\s", r.stdout, re.M) and re.search(r"^null\s+none\s", r.stdout, re.M), r.stdout
    cmd = next(l.strip() for l in r.stdout.splitlines() if l.strip().startswith("lm_eval "))
    table = json.loads((run["dir"]/"eval"/"results"/"base.json").read_text())["scores"]["forge_mc"]
    h = subprocess.run([str(BIN/"lm_eval"), *shlex.split(cmd)[1:], "--output_path", str(tmp_path/"out")], capture_output=True,
                       text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert h.returncode == 0, h.stderr[-3000:]
    (res,) = (tmp_path/"out").rglob("results_*.json")
    hand = json.loads(res.read_text())["results"]["forge_mc"]
    print(f"forge-nb eval: acc {table['acc']} on {table['n']}; lm_eval by hand: acc {hand['acc,none']}")
    assert hand["acc,none"] == table["acc"] and table["n"] == 40
