"""Benchmark of the data stage: tokenize + mix + pack a >= 50 MB corpus with forge_nb, and in the same run the obvious
Hugging Face baseline (`datasets.interleave_datasets` + `map(tokenize, batched=True)` + group-texts chunking), and raw
`tokenizers` `encode_batch_fast` on the same text and cores.

    .venv/bin/python bench/bench_data.py            # the 50 MB figures (a few minutes on 2 cores)
    .venv/bin/python bench/bench_data.py --mb 6     # a quick check
    .venv/bin/python bench/bench_data.py --quick    # what `bench/run --quick` runs: 3 MB, one round

The corpus is built from Python's own standard library (every machine with Python has it), as three sources whose
documents differ ~10x in length: `short` (4-line blocks), `medium` (40-line blocks) and `long` (whole modules).
When the library is smaller than asked, further copies get a varying header line (so exact dedup keeps them).
Everything is cached under bench/out/ (git-ignored); the token stores are rebuilt on every run.
"""
import argparse, json, os, shutil, sys, sysconfig, time
from pathlib import Path
import numpy as np
from benchlib import emit, figure

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT/"bench"/"out"
WEIGHTS = [0.4, 0.3, 0.3]
NAMES = ["short", "medium", "long"]

def build_corpus(mb: float) -> Path:
    d = OUT/f"corpus_{mb:g}mb"
    if (d/"DONE").exists(): return d
    d.mkdir(parents=True, exist_ok=True)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    target = mb * 1e6 / 3
    for k, (name, lines) in enumerate([("short", 4), ("medium", 40), ("long", None)]):
        size, copy = 0, 0
        with open(d/f"{name}.jsonl", "w") as out:
            while size < target:
                for i, f in enumerate(files):
                    if i % 3 != k: continue
                    try: text = f.read_text(encoding="utf-8")
                    except (UnicodeDecodeError, OSError): continue
                    head = f"# {f.stem} variant {copy}\n" if copy else ""
                    if lines is None: docs = [head + text]
                    else:
                        ls = [l for l in text.splitlines() if l.strip()]
                        docs = [head + "\n".join(ls[j:j + lines]) for j in range(0, len(ls), lines)]
                    for t in docs:
                        if not t.strip(): continue
                        line = json.dumps({"text": t}) + "\n"; out.write(line); size += len(t.encode())
                        if size >= target: break
                    if size >= target: break
                copy += 1
    (d/"DONE").write_text("ok")
    return d

def read_texts(path: Path) -> list:
    with open(path) as f: return [json.loads(l)["text"] for l in f]

def get_tokenizer(corpus: Path, vocab: int) -> Path:
    from forge_nb.data.tokenizer import train_tokenizer
    p = OUT/f"tokenizer_{vocab}"
    if (p/"tokenizer.json").exists(): return p
    sample = []
    for n in NAMES:
        t = read_texts(corpus/f"{n}.jsonl"); sample += t[: max(1, len(t) // 20)]
    train_tokenizer(sample, p, vocab_size=vocab, model_max_length=4096)
    return p

def bench_raw(tok_path: Path, texts: list, batch_docs: int = 4096, batch_chars: int = 4_000_000) -> dict:
    "Raw Rust tokenizer on the same text, same batching, text already in memory (nothing else timed)."
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tok_path/"tokenizer.json"))
    batches, cur, n = [], [], 0
    for t in texts:
        cur.append(t); n += len(t)
        if len(cur) >= batch_docs or n >= batch_chars: batches.append(cur); cur, n = [], 0
    if cur: batches.append(cur)
    t0 = time.perf_counter(); ntok = 0
    for b in batches: ntok += sum(len(e) for e in tok.encode_batch_fast(b, add_special_tokens=False))
    dt = time.perf_counter() - t0
    return {"tokens": ntok, "seconds": dt, "tokens_per_s": ntok / dt}

def bench_forge(corpus: Path, tok_path: Path, seq_len: int) -> dict:
    "forge_nb's data stage end to end: read + filter/dedup + tokenize + plan + mix + best-fit pack + write shards."
    from forge_nb.config import PipelineConfig, DataConfig, SourceConfig, TokenizerConfig
    from forge_nb.data.store import run_data_stage, TokenStore
    runs = OUT/"runs"; shutil.rmtree(runs, ignore_errors=True)
    cfg = PipelineConfig(name="bench", runs_dir=str(runs), stages=["data"],
                         data=DataConfig(sources=[SourceConfig(name=n, path=str(corpus/f"{n}.jsonl")) for n in NAMES],
                                         strategy="static", weights=WEIGHTS, max_epochs=10, seq_len=seq_len, val_docs=16,
                                         shard_tokens=2 ** 24),
                         tokenizer=TokenizerConfig(path=str(tok_path)))
    import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot, transformers   # imports are not timed (as for the baseline)
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    t0 = time.perf_counter()
    s = run_data_stage(cfg, runs/"bench", log=lambda *a: None)
    dt = time.perf_counter() - t0
    m = TokenStore(runs/"bench").manifest
    corpus_tokens = sum(c["tokens"] - c["docs"] for c in m["compression"])   # text tokens, as raw counts them (no eos)
    real = np.array(m["mix"]["realized_tokens"]).sum(0)
    return {"tokens": corpus_tokens, "tokens_written": m["train"]["tokens"], "seconds": dt, "tokens_per_s": corpus_tokens / dt,
            "share_error_pts": float(100 * np.abs(real / real.sum() - np.array(WEIGHTS)).max()),
            "shares": (real / real.sum()).round(4).tolist(), "fill": s["fill"]}

def bench_baseline(corpus: Path, tok_path: Path, seq_len: int) -> dict:
    "The usual Hugging Face recipe: load JSON, interleave by per-example probabilities, batched map tokenize, group texts."
    import datasets
    from transformers import AutoTokenizer
    datasets.disable_progress_bars()
    cache = OUT/"hf_cache"; shutil.rmtree(cache, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(tok_path))
    t0 = time.perf_counter()
    dss = [datasets.load_dataset("json", data_files=str(corpus/f"{n}.jsonl"), split="train", cache_dir=str(cache))
           .map(lambda b, i=i: {"source": [i] * len(b["text"])}, batched=True) for i, n in enumerate(NAMES)]
    mixed = datasets.interleave_datasets(dss, probabilities=WEIGHTS, seed=0, stopping_strategy="first_exhausted")
    eos = tok.eos_token_id
    tokd = mixed.map(lambda b: {"input_ids": [x + [eos] for x in tok(b["text"], add_special_tokens=False)["input_ids"]]},
                     batched=True, remove_columns=["text"])
    per_source = np.zeros(3)
    for b in tokd.iter(batch_size=10_000):
        np.add.at(per_source, b["source"], [len(x) - 1 for x in b["input_ids"]])   # text tokens (no eos), as raw counts them
    def group(b):
        cat = [t for x in b["input_ids"] for t in x]; n = len(cat) // seq_len * seq_len
        return {"input_ids": [cat[i:i + seq_len] for i in range(0, n, seq_len)]}
    grouped = tokd.map(group, batched=True, remove_columns=tokd.column_names)
    dt = time.perf_counter() - t0
    ntok = int(per_source.sum())
    return {"tokens": ntok, "tokens_written": len(grouped) * seq_len, "seconds": dt, "tokens_per_s": ntok / dt,
            "share_error_pts": float(100 * np.abs(per_source / ntok - np.array(WEIGHTS)).max()),
            "shares": (per_source / ntok).round(4).tolist()}

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=50, help="corpus size in MB (>= 50 for the reported figures)")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--no-baseline", action="store_true", help="skip the datasets baseline")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the three pipelines (medians and best reported)")
    ap.add_argument("--quick", action="store_true", help="3 MB corpus, one round (a smoke figure, not the reported one)")
    a = ap.parse_args()
    if a.quick: a.mb, a.repeats = 3, 1
    OUT.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(a.mb)
    mb = sum((corpus/f"{n}.jsonl").stat().st_size for n in NAMES) / 1e6
    tok = get_tokenizer(corpus, a.vocab)
    texts = [t for n in NAMES for t in read_texts(corpus/f"{n}.jsonl")]
    lens = {n: np.mean([len(t) for t in read_texts(corpus/f"{n}.jsonl")]) for n in NAMES}
    print(f"corpus: {mb:.1f} MB of JSONL, {len(texts):,} documents; mean chars per doc "
          + ", ".join(f"{n} {v:,.0f}" for n, v in lens.items()) + f"; cores: {os.cpu_count()}", flush=True)
    res = {"corpus_mb": mb, "docs": len(texts), "cores": os.cpu_count(), "load_avg_start": os.getloadavg()[0], "runs": []}
    for rep in range(a.repeats):          # interleaved rounds: the machine may be shared, so compare within a round
        run = {"raw": bench_raw(tok, texts)}
        print(f"[{rep}] raw encode_batch_fast: {run['raw']['tokens_per_s']:,.0f} tokens/s", flush=True)
        run["forge_nb"] = bench_forge(corpus, tok, a.seq_len)
        print(f"[{rep}] forge_nb: {run['forge_nb']['tokens_per_s']:,.0f} tokens/s", flush=True)
        if not a.no_baseline:
            run["baseline"] = bench_baseline(corpus, tok, a.seq_len)
            print(f"[{rep}] baseline: {run['baseline']['tokens_per_s']:,.0f} tokens/s", flush=True)
        res["runs"].append(run)
    res["load_avg_end"] = os.getloadavg()[0]
    R = res["runs"]; names = [k for k in ("raw", "forge_nb", "baseline") if k in R[0]]
    tps = {k: np.array([r[k]["tokens_per_s"] for r in R]) for k in names}
    for k in names: res[k] = {**max((r[k] for r in R), key=lambda x: x["tokens_per_s"]), "median_tokens_per_s": float(np.median(tps[k]))}
    label = {"raw": "raw `encode_batch_fast` (text in memory)", "forge_nb": "forge_nb (read+tokenize+mix+pack+write)",
             "baseline": "datasets interleave+map+group"}
    print(f"\n{a.repeats} interleaved rounds; load average {res['load_avg_start']:.1f} at start, {res['load_avg_end']:.1f} at end ({os.cpu_count()} cores)")
    print("\n| pipeline | text tokens | best s | tokens/s, median | tokens/s, best | token-share error (pts) |\n|---|---|---|---|---|---|")
    for k in names:
        b = res[k]; err = f"{b['share_error_pts']:.3f}" if "share_error_pts" in b else "–"
        print(f"| {label[k]} | {b['tokens']:,} | {b['seconds']:.1f} | {b['median_tokens_per_s']:,.0f} | {b['tokens_per_s']:,.0f} | {err} |")
    def ratios(x, y):                      # median of the per-round ratios, and the ratio of the best runs
        return float(np.median(tps[x] / tps[y])), float(tps[x].max() / tps[y].max())
    if "baseline" in tps:
        res["ratio_vs_baseline"], best_b = ratios("forge_nb", "baseline")
        print(f"\nforge_nb / baseline: {res['ratio_vs_baseline']:.2f}x median of rounds, {best_b:.2f}x best vs best (target >= 2x); "
              f"baseline shares {res['baseline']['shares']} vs requested {WEIGHTS}")
    res["ratio_vs_raw"], best_r = ratios("forge_nb", "raw")
    print(f"forge_nb / raw encode_batch_fast: {100 * res['ratio_vs_raw']:.1f}% median of rounds, {100 * best_r:.1f}% best vs best (target >= 90%); "
          f"forge_nb shares {res['forge_nb']['shares']}, fill {res['forge_nb']['fill']}")
    (OUT/"bench_data.json").write_text(json.dumps(res, indent=2))
    f = res["forge_nb"]["median_tokens_per_s"]
    figs = [figure("data stage tokens/s (read+tokenize+mix+pack+write)", f, "tokens/s", "raw encode_batch_fast (text in memory)",
                   res["raw"]["median_tokens_per_s"], note="goal >= 0.90")]
    if "baseline" in res:
        figs.append(figure("data stage tokens/s", f, "tokens/s", "datasets interleave+map+group", res["baseline"]["median_tokens_per_s"],
                           note="goal >= 2"))
    figs.append(figure("token-share error", res["forge_nb"]["share_error_pts"], "points",
                       "datasets interleave+map+group" if "baseline" in res else None,
                       res["baseline"]["share_error_pts"] if "baseline" in res else None, better="lower"))
    emit("data", figs, quick=a.quick, corpus_mb=round(mb, 1), rounds=a.repeats)

if __name__ == "__main__":
    main()
