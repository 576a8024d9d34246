"""The compliance report's citation figures on the tiny demo (`tiny_lifecycle`, what `forge-nb demo --size tiny` runs):
the fabricated-citation rate and the exact-page rate before and after RL that the report shows are recounted here
from the completions the RL stage wrote (`rl/heldout_{before,after}.jsonl`), the prompt rows and the demo's page
index, read as plain JSON with a regex of their own, not with forge_nb's cite rule."""
import json, os, re
from pathlib import Path
import pytest
from forge_nb.demo import tiny_lifecycle
from forge_nb.pipeline import run_foreground

PAGE = re.compile(r"Source:[ \t]*(\S*)")   # every Source: line cites something (a malformed one: a page that does not exist)


def jsonl(p: Path) -> list:
    return [json.loads(l) for l in Path(p).read_text().splitlines() if l.strip()]


def recount(run: Path, cfg) -> dict:
    "Per model: answers, those citing a page not in kb-pages.jsonl, those citing exactly the page given, those citing none."
    rows = jsonl(cfg.rl.heldout_prompts)
    pages = {r["id"] for r in jsonl(Path(cfg.rl.policy).parent/"kb-pages.jsonl")}
    out = {}
    for w in ("before", "after"):
        recs = jsonl(run/"rl"/f"heldout_{w}.jsonl")
        cited = [set(PAGE.findall(r["completion"])) for r in recs]
        given = [rows[r["row"]]["source"] for r in recs]
        out[w] = {"n": len(recs), "fabricated": sum(bool(c - pages) for c in cited), "none": sum(not c for c in cited),
                  "exact": sum(c == {g} and g in pages for c, g in zip(cited, given))}
    return out


def pct(k: int, n: int) -> str:
    "The share as the report prints it, to one decimal (its interval aside)."
    return f"{k / n:.1%}"


def check_report(run: Path, cfg):
    from forge_nb.report import report_figures
    counted = recount(run, cfg)
    figs = report_figures(run)["citations"]["cites_source"]
    page = (run/"report.html").read_text()
    sec = page[page.index("<section id='citations'>"):]
    sec = sec[:sec.index("</section>")]
    for w in ("before", "after"):
        assert {k: figs[w][k] for k in counted[w]} == counted[w], (w, figs[w], counted[w])
        assert figs[w]["fabricated_rate"] == counted[w]["fabricated"] / counted[w]["n"]
    for k, label in (("fabricated", "fabricated: cites an id not in kb-pages.jsonl"), ("exact", "cites exactly the id given")):
        b, a = counted["before"], counted["after"]
        row = re.search(rf"<td>{re.escape(label)}</td><td>([^<]*)</td><td>([^<]*)</td>", sec)
        assert row, sec[:2000]
        assert row.group(1).startswith(pct(b[k], b["n"]) + " [") and row.group(1).endswith(f"({b[k]}/{b['n']})"), (k, row.groups(), b)
        assert row.group(2).startswith(pct(a[k], a["n"]) + " [") and row.group(2).endswith(f"({a[k]}/{a['n']})"), (k, row.groups(), a)
    return counted


@pytest.mark.slow
def test_report_fabricated_citation_rate_is_recounted_from_the_completions(tmp_path):
    cfg = tiny_lifecycle(tmp_path)
    run_foreground(cfg, log=lambda *a: None, out=open(os.devnull, "w"))
    run = tmp_path/"life"
    from forge_nb.report import write_report
    write_report(run)                       # what the pipeline writes at its end (run_foreground runs the stages only)
    rep = json.loads((run/"rl"/"report.json").read_text())
    counted = check_report(run, cfg)
    assert counted["before"]["n"] == counted["after"]["n"] == rep["prompts"] * rep["samples_per_prompt"]
    # the tiny model's answers rarely cite anything: plant answers of every kind in the RL stage's file and report again,
    # so that each figure is counted from something (a made-up page, another existing page, the exact page, none)
    rows, pages = jsonl(cfg.rl.heldout_prompts), [r["id"] for r in jsonl(Path(cfg.rl.policy).parent/"kb-pages.jsonl")]
    recs = jsonl(run/"rl"/"heldout_after.jsonl")
    for i, r in enumerate(recs):
        given = rows[r["row"]]["source"]
        r["completion"] = ["Text.\n\nSource: reference/no_such_page", f"Text.\n\nSource: {next(p for p in pages if p != given)}",
                           f"Text.\n\nSource: {given}", "Text."][i % 4]
    (run/"rl"/"heldout_after.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    write_report(run)
    planted = check_report(run, cfg)["after"]
    n = len(recs)
    assert planted == {"n": n, "fabricated": len(range(0, n, 4)), "none": len(range(3, n, 4)), "exact": len(range(2, n, 4))}
