"""Benchmark of curation's conversion: files/s per core for each file type through forge_nb's converter
(`forge_nb.data.convert.convert_bytes`: Markdown with headings, lists and tables) against calling the chosen library
directly for plain text (pypdf, python-docx, python-pptx, openpyxl, trafilatura, stdlib `email`), same files, same
process, rounds interleaved; then the wall clock of the whole `curate` stage with its files in 1 shard (1 process)
against 4 shards over 2 worker processes.

    .venv/bin/python bench/bench_curate.py            # 60 files per type, 5 rounds
    .venv/bin/python bench/bench_curate.py --quick    # what `bench/run --quick` runs: 15 files per type, 3 rounds
    .venv/bin/python bench/bench_curate.py --slurm    # also: the stage on the local SLURM cluster, 1 task vs a 4-task array

Target: forge_nb / direct >= 0.9 for every type. The files are generated here (from Python's documentation topics)
under bench/out/curate/. Until branch `filters` is merged, the stage's filters, redaction and MinHash are the test
stand-ins (tests/curate_standins.py) and the stage figure says so.
"""
import argparse, email, email.policy, io, os, shutil, statistics, sys, time
from pathlib import Path

from benchlib import emit, figure

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT/"bench"/"out"/"curate"


def make_files(n: int) -> dict:
    "type -> [(name, bytes)], n files each, written once under bench/out/curate/files."
    import pydoc_data.topics as t
    from forge_nb.data.curate import _docx_bytes, _eml, _html, text_pdf
    docs = [(k, v) for k, v in sorted(t.topics.items()) if len(v.split()) > 150][:n]
    while len(docs) < n: docs += docs[:n - len(docs)]

    def pptx(title, text):
        from pptx import Presentation
        prs = Presentation()
        for i in range(0, len(text), 600):
            s = prs.slides.add_slide(prs.slide_layouts[1]); s.shapes.title.text = title; s.placeholders[1].text_frame.text = text[i:i + 600]
        b = io.BytesIO(); prs.save(b); return b.getvalue()

    def xlsx(title, text):
        import openpyxl
        wb = openpyxl.Workbook(); ws = wb.active; ws.title = "data"
        words = text.split()
        for i in range(0, len(words), 8): ws.append(words[i:i + 8])
        b = io.BytesIO(); wb.save(b); return b.getvalue()

    makers = {"pdf": lambda ti, te: text_pdf(f"{ti}\n\n{te}"), "docx": _docx_bytes, "pptx": pptx, "xlsx": xlsx,
              "html": lambda ti, te: _html(ti, te).encode(), "eml": lambda ti, te: _eml(ti, te, 0)}
    return {typ: [(f"{i:04d}.{typ}", mk(ti, te)) for i, (ti, te) in enumerate(docs)] for typ, mk in makers.items()}


def direct(typ: str, data: bytes) -> str:
    "The chosen library called directly, for plain text (no structure kept)."
    if typ == "pdf":
        from pypdf import PdfReader
        return "\n".join(p.extract_text() or "" for p in PdfReader(io.BytesIO(data)).pages)
    if typ == "docx":
        import docx
        return "\n".join(p.text for p in docx.Document(io.BytesIO(data)).paragraphs)
    if typ == "pptx":
        from pptx import Presentation
        return "\n".join(sh.text_frame.text for s in Presentation(io.BytesIO(data)).slides for sh in s.shapes if sh.has_text_frame)
    if typ == "xlsx":
        import openpyxl
        wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        out = "\n".join(" ".join(str(v) for v in r if v is not None) for ws in wb.worksheets for r in ws.iter_rows(values_only=True))
        wb.close(); return out
    if typ == "html":
        import trafilatura
        return trafilatura.extract(data.decode(), output_format="markdown", include_tables=True, favor_precision=True) or ""
    if typ == "eml":
        m = email.message_from_bytes(data, policy=email.policy.default)
        return m.get_body(preferencelist=("plain", "html")).get_content()
    raise ValueError(typ)


def rate(fn, files) -> float:
    t0 = time.perf_counter()
    for name, data in files: fn(name, data)
    return len(files) / (time.perf_counter() - t0)


def stage_wall(share: Path, shards: int, workers: int) -> float:
    from forge_nb.config import PipelineConfig
    from forge_nb.data.curate import run_curate
    runs = OUT/"runs"
    shutil.rmtree(runs/f"s{shards}", ignore_errors=True)
    cfg = PipelineConfig(name=f"s{shards}", runs_dir=str(runs), curate={
        "inputs": [{"name": "kb", "path": str(share)}], "shards": shards, "workers": workers, "filters": {"min_words": 20}})
    t0 = time.perf_counter(); run_curate(cfg, runs/f"s{shards}", log=lambda *a: None)
    return time.perf_counter() - t0


def slurm_wall(share: Path, shards: int) -> tuple[float, dict]:
    """The stage as SLURM jobs on the local cluster (`curate.shards` > 1: a job array of one task per shard, then the
    stage's job): seconds from submitting to COMPLETED, and the curated sources' bytes."""
    from forge_nb import launch as L
    from forge_nb.config import PipelineConfig, ResourcesConfig
    runs = OUT/"slurm-runs"
    shutil.rmtree(runs/f"s{shards}", ignore_errors=True)
    cfg = PipelineConfig(name=f"s{shards}", runs_dir=str(runs), stages=["curate"], resources=ResourcesConfig(cluster="slurm", partition="cpu", time_min=20),
                         curate={"inputs": [{"name": "kb", "path": str(share)}], "shards": shards, "filters": {"min_words": 20}})
    t0 = time.perf_counter(); job = L.launch(cfg, "curate")
    state = job.wait(timeout_s=1800)
    if state != "COMPLETED": raise SystemExit(f"slurm run with {shards} shards ended {state}: {job.stderr(tail=20)}")
    return time.perf_counter() - t0, {f.name: f.read_bytes() for f in (runs/f"s{shards}"/"curate"/"sources").glob("*.jsonl")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true"); ap.add_argument("--files", type=int); ap.add_argument("--rounds", type=int)
    ap.add_argument("--slurm", action="store_true", help="also time the stage on the local SLURM cluster: 1 task vs a 4-task job array")
    a = ap.parse_args()
    n, rounds = a.files or (15 if a.quick else 60), a.rounds or (3 if a.quick else 5)
    import importlib.util
    standin = importlib.util.find_spec("forge_nb.data.filters") is None
    if standin:
        sys.path.insert(0, str(ROOT/"tests")); import curate_standins; curate_standins.install()
    from forge_nb.data.convert import convert_bytes
    try:
        import torch; cap = torch.backends.cpu.get_cpu_capability()
    except Exception: cap = "unknown"
    load0 = os.getloadavg()[0]
    files = make_files(n)
    print(f"{n} files per type, {rounds} interleaved rounds, 1 process; CPU capability {cap}; load average {load0:.1f} ({os.cpu_count()} cores)")
    ours, base = {t: [] for t in files}, {t: [] for t in files}
    for _ in range(rounds):
        for typ, fs in files.items():
            ours[typ].append(rate(lambda nm, d: convert_bytes(d, nm), fs))
            base[typ].append(rate(lambda nm, d, typ=typ: direct(typ, d), fs))
    figs = []
    print("\n| type | forge_nb files/s (median) | direct files/s (median) | ratio of medians | median of per-round ratios |\n|---|---|---|---|---|")
    for typ in files:
        mo, mb = statistics.median(ours[typ]), statistics.median(base[typ])
        rr = statistics.median(o / b for o, b in zip(ours[typ], base[typ]))
        print(f"| {typ} | {mo:,.1f} | {mb:,.1f} | {mo / mb:.2f} | {rr:.2f} |")
        figs.append(figure(f"convert {typ} files/s per core", mo, "files/s", f"{typ}: library called directly (plain text)", mb, note="goal >= 0.90"))
    # the whole stage, 1 shard vs 4 shards over 2 workers, on a share of all the files
    share = OUT/"share"
    shutil.rmtree(share, ignore_errors=True); share.mkdir(parents=True)
    for typ, fs in files.items():
        for name, data in fs: (share/f"{typ}-{name}").write_bytes(data)
    w1 = [stage_wall(share, 1, 1) for _ in range(2)]
    w4 = [stage_wall(share, 4, 2) for _ in range(2)]
    same = all((OUT/"runs"/"s1"/"curate"/"sources"/f.name).read_bytes() == f.read_bytes()
               for f in (OUT/"runs"/"s4"/"curate"/"sources").glob("*.jsonl"))
    print(f"\ncurate stage on {sum(len(f) for f in files.values())} files{' (filters/redact/dedup: test stand-ins)' if standin else ''}: "
          f"1 shard {statistics.median(w1):.2f} s, 4 shards over 2 workers {statistics.median(w4):.2f} s "
          f"(speed-up {statistics.median(w1) / statistics.median(w4):.2f}x); outputs identical: {same}; load average now {os.getloadavg()[0]:.1f}")
    figs.append(figure("curate stage wall clock, 4 shards / 2 workers", statistics.median(w4), "s", "1 shard, 1 process",
                       statistics.median(w1), better="lower", note="stand-in filters" if standin else ""))
    if a.slurm:   # the same share as SLURM jobs: 1 task, then 4 array tasks (+ the stage's reduce job), twice each, interleaved
        s1, s4, b1, b4 = [], [], None, None
        for _ in range(2):
            t, b1 = slurm_wall(share, 1); s1.append(t)
            t, b4 = slurm_wall(share, 4); s4.append(t)
        print(f"on the local SLURM cluster (2 nodes on this one {os.cpu_count()}-core host): 1 task {statistics.median(s1):.1f} s, "
              f"4 array tasks + reduce {statistics.median(s4):.1f} s (ratio 4/1 {statistics.median(s4) / statistics.median(s1):.2f}); "
              f"outputs identical: {b1 == b4}")
        figs.append(figure("curate on SLURM, 4-task array + reduce", statistics.median(s4), "s", "1 task", statistics.median(s1),
                           better="lower", note="2 nodes on one host: job start-up dominates"))
    emit("curate", figs, quick=a.quick, files_per_type=n, rounds=rounds, cpu_capability=cap, identical=same)


if __name__ == "__main__":
    main()
