"""Peak memory of the data stage against the number of documents: one source of N distinct short documents (so the
per-document state, not the text, dominates), each N in a fresh process; prints peak RSS and the slope in bytes per
document between the smallest and the largest N. Peak RSS counts pages of memory-mapped files too (the token file
and the per-document index on disk, which the kernel can drop under pressure); the anonymous part (heap: what
cannot be paged out without swap) is sampled every 20 ms and shown beside it.

    .venv/bin/python bench/bench_data_memory.py                 # N = 1M and 3M (about a minute)
    .venv/bin/python bench/bench_data_memory.py 250000 1000000
    .venv/bin/python bench/bench_data_memory.py --quick         # N = 100k and 300k (what `bench/run --quick` runs)
"""
import json, os, random, resource, shutil, subprocess, sys, threading, time
from pathlib import Path
from benchlib import emit, figure

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT/"bench"/"out"/"memory"

def corpus(n: int) -> Path:
    f = OUT/f"docs_{n}.jsonl"
    if f.exists(): return f
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0); words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    with open(f.with_suffix(".tmp"), "w") as out:
        for i in range(n): out.write(json.dumps({"text": f"{i} " + " ".join(rng.choice(words) for _ in range(8))}) + "\n")
    f.with_suffix(".tmp").rename(f)
    return f

def child(n: int):
    "Run the data stage on N documents in this process; print one JSON line."
    from forge_nb.config import PipelineConfig, DataConfig, SourceConfig, TokenizerConfig
    from forge_nb.data.store import run_data_stage
    import numpy, tokenizers, pyarrow.json   # imports before the baseline reading
    tok = OUT/"tokenizer"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_anon, stop = [0], threading.Event()
    def sample():
        while not stop.is_set():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"): peak_anon[0] = max(peak_anon[0], int(line.split()[1]))
            time.sleep(0.02)
    threading.Thread(target=sample, daemon=True).start()
    runs = OUT/f"runs_{n}"; shutil.rmtree(runs, ignore_errors=True)
    cfg = PipelineConfig(name="m", runs_dir=str(runs), stages=["data"], tokenizer=TokenizerConfig(path=str(tok)),
                         data=DataConfig(sources=[SourceConfig(name="s", path=str(corpus(n)))], seq_len=1024, val_docs=16))
    run_data_stage(cfg, runs/"m", log=lambda *a: None)
    shutil.rmtree(runs, ignore_errors=True)
    stop.set()
    print(json.dumps({"n": n, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "imports_mb": before / 1024,
                      "anon_mb": peak_anon[0] / 1024}))

def main():
    if sys.argv[1:2] == ["--child"]: return child(int(sys.argv[2]))
    quick = "--quick" in sys.argv[1:]
    ns = [int(x) for x in sys.argv[1:] if x != "--quick"] or ([100_000, 300_000] if quick else [1_000_000, 3_000_000])
    if not (OUT/"tokenizer"/"tokenizer.json").exists():
        from forge_nb.data.tokenizer import train_tokenizer
        train_tokenizer([l for _, l in zip(range(20_000), open(corpus(min(ns))))], OUT/"tokenizer", vocab_size=1024)
    rows = []
    for n in ns:
        corpus(n)
        out = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"N = {n:>10,}: peak RSS {rows[-1]['rss_mb']:7.0f} MB, anonymous {rows[-1]['anon_mb']:7.0f} MB "
              f"(after imports {rows[-1]['imports_mb']:.0f} MB)", flush=True)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        per = lambda k: (b[k] - a[k]) * 2**20 / (b["n"] - a["n"])
        print(f"slope: {per('rss_mb'):.0f} bytes per document (anonymous: {per('anon_mb'):.0f})")
    b = rows[-1]
    figs = [figure(f"data stage peak RSS, {b['n']:,} docs", b["rss_mb"], "MB", "same process after its imports", b["imports_mb"], better="lower"),
            figure(f"data stage peak anonymous RSS, {b['n']:,} docs", b["anon_mb"], "MB", "same process after its imports",
                   b["imports_mb"], better="lower")]
    if len(rows) > 1:
        figs.append(figure(f"RSS slope {rows[0]['n']:,} -> {b['n']:,} docs", per("rss_mb"), "bytes/doc", better="lower",
                           note=f"anonymous {per('anon_mb'):.0f} B/doc"))
    emit("data memory", figs, quick=quick, ns=ns)

if __name__ == "__main__":
    main()
