"""The whole lifecycle as one pipeline (data → pretrain → SFT → RL → report): finished stages are skipped on a rerun,
changing one SFT field reruns SFT and RL only, `--force STAGE` reruns it and every stage after it, and the report
renders in Chromium. A tiny pipeline in this process (`--foreground`) keeps each run to seconds of training."""
import json, os, re, subprocess, sys
from pathlib import Path
import pytest
from forge_nb.config import load_config
from forge_nb.demo import tiny_lifecycle
from forge_nb.pipeline import run_foreground

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["data", "pretrain", "sft", "rl"]


def forge(*args, timeout=900):
    r = subprocess.run([str(Path(sys.executable).parent/"forge-nb"), *args], capture_output=True, text=True, timeout=timeout,
                       cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def ran(out: str) -> list:
    "Stages that ran (not skipped), from the run's printed lines."
    return [s for s in STAGES if f"[{s}] running in this process" in out]


def skipped(out: str) -> list:
    return [s for s in STAGES if f"[{s}] skipped:" in out]


def mtimes(run: Path) -> dict:
    "When each stage's main output was written (recounted from the files, not from the pipeline's own records)."
    paths = {"data": "data/manifest.json", "pretrain": "pretrain/final/config.json", "sft": "sft/final/config.json",
             "rl": "rl/final/config.json"}
    return {s: (run/p).stat().st_mtime_ns for s, p in paths.items()}


_WORD = re.compile(r"[A-Za-z]{4,}")

def demo_rules(completion: str, row: dict, pages: set) -> dict:
    """The demo policy's three rules, written out here (not with forge_nb.policy): a `Source:` line citing the exact page
    the prompt gives and no other (a page of the index), at most 20 words, every 4+-letter word in the knowledge base's list."""
    cited = set(re.findall(r"Source:[ \t]*(\S*)", completion))
    words = [w.lower() for w in _WORD.findall(completion.split("Source:")[0])]
    vocab = set(Path(row["vocabulary"]).read_text().split())
    return {"cites_source": cited == {row["source"]} and row["source"] in pages, "concise": len(completion.split()) <= 20,
            "known_words": bool(words) and all(w in vocab for w in words)}


def kb_page_ids(cfg) -> set:
    "The page ids of the demo's index (kb-pages.jsonl beside the policy), read here as plain JSON lines."
    return {json.loads(l)["id"] for l in (Path(cfg.rl.policy).parent/"kb-pages.jsonl").read_text().splitlines() if l.strip()}


def recount(run: Path) -> dict:
    "Pass rates before and after RL per rule and for all rules, recounted from rl/heldout_{before,after}.jsonl and the prompts file."
    from forge_nb.config import load_config
    cfg = load_config(run/"config.yaml")
    rows = [json.loads(l) for l in Path(cfg.rl.heldout_prompts).read_text().splitlines() if l.strip()]
    pages, out = kb_page_ids(cfg), {}
    for w in ("before", "after"):
        recs = [json.loads(l) for l in (run/"rl"/f"heldout_{w}.jsonl").read_text().splitlines()]
        ok = [demo_rules(r["completion"], rows[r["row"]], pages) for r in recs]
        out[w] = {n: sum(o[n] for o in ok) / len(ok) for n in ("cites_source", "concise", "known_words")}
        out[w]["all rules"], out[w]["n"] = sum(all(o.values()) for o in ok) / len(ok), len(ok)
    return out


@pytest.mark.slow
def test_rerun_skips_sft_change_reruns_sft_and_rl_force_reruns_after(tmp_path):
    """The README's optional third command, `bash scripts/demo.sh --size tiny` (here in this process, `--foreground`, and
    under tmp_path), then the same demo again, with one SFT field changed, and with `--force`."""
    demo = ["--size", "tiny", "--runs-dir", str(tmp_path), "--foreground"]
    r = subprocess.run(["bash", str(ROOT/"scripts"/"demo.sh"), *demo], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    out, run = r.stdout, tmp_path/"demo-tiny"
    assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
    assert ran(out) == STAGES and (run/"report.html").exists(), out[-2000:]
    # tiny_lifecycle's settings, the pipeline tests' own (recounted from the config the run saved)
    saved, ref = load_config(run/"config.yaml"), tiny_lifecycle(tmp_path/"demo-tiny-inputs")
    assert [saved.pretrain, saved.sft, saved.rl] == [ref.pretrain, ref.sft, ref.rl]
    # --foreground shows progress too: each training step's line with step/total, rate and time left
    assert re.search(r"\[pretrain\] step=6 loss=\S+ .*\| 6/6 \(100%\), \S+ steps/s, ETA 0m00s", out), out[-3000:]
    assert re.search(r"\[sft\] step=4 loss=\S+ .*\| 4/4 \(100%\)", out), out[-3000:]
    first = mtimes(run)
    rep = json.loads((run/"rl"/"report.json").read_text())
    assert rep["rules"].keys() == {"cites_source", "concise", "known_words"}
    counted = recount(run)                      # the written held-out completions, rescored here, give the report's figures
    for w in ("before", "after"):
        assert counted[w]["n"] == rep["prompts"] * rep["samples_per_prompt"]
        assert {n: counted[w][n] for n in rep["rules"]} == {n: v[w]["pass_rate"] for n, v in rep["rules"].items()}
        assert counted[w]["all rules"] == rep["pass_rate"][w]

    out = forge("demo", *demo)                                     # again: every stage reused
    assert ran(out) == [] and skipped(out) == STAGES, out[-2000:]
    assert mtimes(run) == first
    assert f"report: {(run/'report.html').absolute()}" in out

    out = forge("demo", *demo, "--set", "sft.lr=0.002")            # one SFT field: SFT and RL only
    assert ran(out) == ["sft", "rl"] and skipped(out) == ["data", "pretrain"], out[-2000:]
    second = mtimes(run)
    assert [s for s in STAGES if second[s] != first[s]] == ["sft", "rl"]

    out = forge("demo", *demo, "--set", "sft.lr=0.002", "--force", "pretrain")   # it and every stage after
    assert ran(out) == ["pretrain", "sft", "rl"] and skipped(out) == ["data"], out[-2000:]
    third = mtimes(run)
    assert [s for s in STAGES if third[s] != second[s]] == ["pretrain", "sft", "rl"]


def test_force_names_a_stage_of_the_pipeline(tmp_path):
    cfg = tiny_lifecycle(tmp_path)
    with pytest.raises(ValueError, match="--force rl: not a stage of this pipeline"):
        run_foreground(cfg, ["data"], force=["rl"], log=lambda *a: None)


@pytest.mark.browser
def test_report_renders_in_chromium(chromium, tmp_path, artifacts_dir):
    "A report of a real (tiny) run: its SVG charts have bars and its tables have rows, in a real browser, offline."
    from playwright.sync_api import sync_playwright
    from forge_nb.report import write_report
    cfg = tiny_lifecycle(tmp_path)
    run_foreground(cfg, log=lambda *a: None, out=open(os.devnull, "w"))
    page_path = write_report(tmp_path/"life")
    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=args)
        try:
            page = b.new_page()
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.absolute().as_uri())
            page.screenshot(path=str(artifacts_dir/"report.png"), full_page=True)
            assert [u for u in requests if not u.startswith("file:")] == []          # nothing fetched: self-contained
            for sid in ["time", "mix", "bpb", "sft", "rl", "samples", "artifacts"]:
                sec = page.locator(f"section#{sid}")
                assert sec.count() == 1 and sec.locator(".none").count() == 0, f"section {sid} is empty"
            for sid in ["time", "mix", "bpb", "sft", "rl"]:                          # each chart drew bars of some width
                rects = page.locator(f"section#{sid} svg rect")
                assert rects.count() > 0, sid
                assert max(rects.nth(i).bounding_box()["width"] for i in range(rects.count())) > 5, sid
            rules = page.locator("section#rl table tbody tr td:first-child").all_inner_texts()
            assert rules[:3] == ["cites_source", "concise", "known_words"]
            doms = page.locator("section#bpb table tbody tr td:first-child").all_inner_texts()
            assert sorted(doms) == sorted(json.loads((tmp_path/"life"/"pretrain"/"summary.json").read_text())["val_bpb"])
            paths = page.locator("section#artifacts td:nth-child(2)").all_inner_texts()
            assert str((tmp_path/"life"/"rl"/"final").absolute()) in paths
        finally: b.close()


@pytest.fixture(scope="module")
def full_demo(tmp_path_factory):
    "The README's demo at its own settings, run once for this module (FORGE_DEMO_RUNS=DIR reuses a finished demo there)."
    runs = Path(os.environ.get("FORGE_DEMO_RUNS") or tmp_path_factory.mktemp("full-demo"))
    out = forge("demo", "--runs-dir", str(runs), timeout=3600)
    assert out.rstrip().splitlines()[-1] == f"forge_nb: report: {(runs/'demo'/'report.html').absolute()}"
    return runs/"demo"


def citations(run: Path) -> dict:
    "Per model: held-out answers citing a page not in the index (every `Source:` line counts) and citing exactly the page given."
    cfg = load_config(run/"config.yaml")
    rows = [json.loads(l) for l in Path(cfg.rl.heldout_prompts).read_text().splitlines() if l.strip()]
    pages, out = kb_page_ids(cfg), {}
    for w in ("before", "after"):
        recs = [json.loads(l) for l in (run/"rl"/f"heldout_{w}.jsonl").read_text().splitlines()]
        cited = [set(re.findall(r"Source:[ \t]*(\S*)", r["completion"])) for r in recs]
        given = [rows[r["row"]]["source"] for r in recs]
        out[w] = {"n": len(recs), "fabricated": sum(bool(c - pages) for c in cited),
                  "exact": sum(c == {g} and g in pages for c, g in zip(cited, given))}
    return out


@pytest.mark.full_demo
def test_full_demo_rl_raises_heldout_pass_rates(full_demo):
    """The README's demo at its own settings (its wall time: `bench/run --only demo`; `pytest -m full_demo`): on held-out
    prompts, RL raises `known_words` by at least 20 points over the SFT model and makes no rule worse than one held-out
    sample's share, recounted from the written completions; the report's citation figures are those recounted here."""
    from forge_nb.report import report_figures
    c = recount(full_demo)
    print(json.dumps(c, indent=1))
    assert c["after"]["known_words"] - c["before"]["known_words"] >= 0.20, c
    for n in ("cites_source", "concise", "known_words"): assert c["after"][n] >= c["before"][n] - 1 / c["before"]["n"], (n, c)
    cit, figs = citations(full_demo), report_figures(full_demo)["citations"]["cites_source"]
    assert {w: {k: figs[w][k] for k in ("n", "fabricated", "exact")} for w in cit} == cit, (cit, figs)


@pytest.mark.full_demo
@pytest.mark.xfail(strict=False, reason="issue 24: the demo's ~1M-parameter model never cites the exact page, so GRPO cannot "
                   "reward it, and RL raised the fabricated-citation rate (91.4% -> 100% in a run on AVX2)")
def test_full_demo_rl_does_not_raise_fabricated_citations(full_demo):
    "Issue 24's bar: RL does not raise the fabricated-citation rate and raises the exact-page rate (recounted from the completions)."
    cit = citations(full_demo)
    print(json.dumps(cit, indent=1))
    assert cit["after"]["fabricated"] <= cit["before"]["fabricated"] and cit["after"]["exact"] > cit["before"]["exact"], cit
