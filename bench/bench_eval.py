"""The evaluation stage's figures (forge_nb.evaluation, issue 23), on the demo's documents and the demo's architecture:

1. wall time of the decision table: split + benchmark (questions, retrieval, task YAML) + scoring the null model and
   the candidates through lm-evaluation-harness, against the issue's target of 3 minutes on 2 cores;
2. the null model's multiple-choice accuracy against chance (1 / choices), with its standard error on N questions;
3. forge_nb's bits per byte (`document_bpb`, the pretraining loss function) against lm-eval's `bits_per_byte` on
   the same held-out documents (relative difference);
4. retrieval recall@k (the question's own document among the top-k BM25 passages).

Without `--run`, the candidates are three models of the demo's architecture (random weights, seeds 1-3) put where the
run's own stages leave theirs (`pretrain/final`, `sft/final`, `rl/final`): scoring time does not depend on the
weights, and the accuracies of untrained stand-ins are not quality figures. With `--run RUN_DIR` (a finished demo
run), its config, tokenizer and models are used as they are.

    python bench/bench_eval.py                  # the demo corpus (40k docstrings), 3 stand-in candidates
    python bench/bench_eval.py --run runs/demo  # a finished demo run's own models
    python bench/bench_eval.py --quick          # 3000 docstrings, 1 candidate, 60 questions per task: checks the bench runs
"""
import argparse, json, math, os, shutil, tempfile, time
from pathlib import Path
from benchlib import emit, figure


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--run", help="a finished run directory (its config.yaml, data/tokenizer and stage models)")
    ap.add_argument("--out", help="work folder (default: a temporary one)")
    a = ap.parse_args()
    import torch
    from forge_nb.config import load_config, override
    from forge_nb.demo import demo_config
    from forge_nb.evaluation import (split_run, read_split, split_dir, build_benchmark, evaluate_run, format_table,
                                     document_bpb, eval_dir)
    from forge_nb.runs import read_jsonl
    out, tok = Path(a.out or tempfile.mkdtemp(prefix="bench_eval_")), None
    load0 = os.getloadavg()
    print(f"CPU {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"load average {load0[0]:.2f}")
    if a.run:
        run = Path(a.run)
        cfg = load_config(run/"config.yaml")
        if a.quick: cfg = override(cfg, "eval.n_items=60")
        for p in ("benchmark.json", "results", "tasks", "benchmark", "null"):      # a fresh benchmark, the same split
            q = eval_dir(run)/p
            if q.is_dir(): shutil.rmtree(q)
            elif q.exists(): q.unlink()
        tok = None
    else:
        cfg = demo_config(runs_dir=str(out/"runs"), name="bench")
        if a.quick:
            from forge_nb.demo import prepare_demo_corpus
            src = prepare_demo_corpus(out/"runs"/"small-corpus", max_docstrings=3000)
            cfg = override(cfg, f"data.sources.2.path={src['docstrings']}", "eval.n_items=60", "eval.bpb_docs=4")
        run = Path(cfg.runs_dir)/cfg.name
        shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    man = split_run(cfg, run)
    t_split = time.perf_counter() - t0
    print(f"split: {man['counts']} in {t_split:.1f} s")
    if not a.run:
        from forge_nb.data.tokenizer import train_tokenizer
        from forge_nb.model import build_model
        know, budget, texts = read_split(split_dir(run), "knowledge"), cfg.tokenizer.train_bytes, []
        for d in know:
            texts.append(d["text"]); budget -= len(d["text"])
            if budget <= 0: break
        t = time.perf_counter()
        tok = train_tokenizer(texts, vocab_size=cfg.tokenizer.vocab_size)
        print(f"tokenizer ({cfg.tokenizer.vocab_size} tokens, trained on the knowledge split; the data stage's job, not timed "
              f"as evaluation): {time.perf_counter() - t:.1f} s")
        for i, st in enumerate(["pretrain"] if a.quick else ["pretrain", "sft", "rl"]):
            torch.manual_seed(i + 1)
            m = build_model(cfg.model, len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            m.save_pretrained(run/st/"final"); tok.save_pretrained(run/st/"final")
    t0 = time.perf_counter()
    if tok is None:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(run/"data"/"tokenizer")
    bench = build_benchmark(cfg, run, tok)
    t_bench = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = evaluate_run(cfg, run, tokenizer=tok)
    t_score = time.perf_counter() - t0
    print("\n" + format_table(rows) + "\n")
    total = t_split + t_bench + t_score
    n_cand = len({r["candidate"] for r in rows}) - 1
    print(f"decision table: {total:.0f} s (split {t_split:.1f} s, benchmark {t_bench:.1f} s, scoring null + {n_cand} candidates "
          f"{t_score:.0f} s); load average {os.getloadavg()[0]:.2f}")
    null = json.loads((eval_dir(run)/"results"/"null.json").read_text())["scores"]["forge_mc"]
    chance, n = bench["chance"], null["n"]
    se = math.sqrt(chance * (1 - chance) / n)
    print(f"null model: accuracy {null['acc']:.4f} on {n} questions, chance {chance:.2f}, standard error {se:.4f}, "
          f"z {(null['acc'] - chance) / se:+.2f}")
    from transformers import AutoModelForCausalLM
    src = sorted(t for t in bench["tasks"] if t.startswith("forge_bpb_"))[0]
    docs = [r["text"] for _, r in read_jsonl(eval_dir(run)/"benchmark"/f"{src.removeprefix('forge_')}.jsonl")]
    mine = document_bpb(AutoModelForCausalLM.from_pretrained(eval_dir(run)/"null", dtype=torch.float32), tok, docs)["bpb"]
    theirs = json.loads((eval_dir(run)/"results"/"null.json").read_text())["scores"][src]["bits_per_byte"]
    rel = abs(mine - theirs) / theirs
    print(f"bits per byte ({src}, {len(docs)} documents, null model): forge_nb {mine:.9f}, lm-eval {theirs:.9f}, relative difference {rel:.2e}")
    r = bench["retrieval"]
    print(f"retrieval: recall@{r['k']} {r['recall_at_k']:.3f} over {r['over']} documents ({r['passages']} passages), "
          f"{r['prompt_tokens_added']:.0f} prompt tokens added per question")
    emit("eval", [figure("decision table wall time", total, "s", "issue 23 target", 180.0, better="lower",
                         note=f"null + {n_cand} candidates, {bench['items']} questions; load {load0[0]:.1f}"),
                  figure("null model accuracy", null["acc"], "accuracy", "chance", chance, better="lower",
                         note=f"n {n}, standard error {se:.4f}"),
                  figure("bpb relative difference to lm-eval", rel, "relative", better="lower"),
                  figure(f"retrieval recall@{r['k']}", r["recall_at_k"], "share", better="higher")], quick=a.quick)


if __name__ == "__main__":
    main()
