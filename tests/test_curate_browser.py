"""The curation preview (issue 22, item 7) as a user meets it, in a real JupyterLab driven by Debian's Chromium.

A planted share (mixed office files with personal data, near-duplicates and broken files) is previewed; the page must
show the funnel, the broken files with their reasons and the curated text with its placeholders highlighted, and no
planted value. A threshold typed into the form changes what the next preview keeps. Launch then runs the `curate`
stage on this machine, and the curated sources it writes are read back from disk: the same documents the preview
showed for the whole share. Screenshots go to test-artifacts/curate-preview-*.png."""
import json, time
import pytest
from test_browser import lab, browser, open_and_run_all, write_notebook, wait_until  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

def test_curate_preview_highlights_redactions_follows_thresholds_and_launches(lab, browser, artifacts_dir):
    from forge_nb.data.curate import write_share, PLANTED_PII
    root = lab["root"]
    docs = {"handbook": [(f"Policy {i}", f"Section {i}. Staff book travel through the portal and keep every receipt for audit. "
                          f"Claims above {100 + i} euros need a manager's approval before payment, and the finance team checks them weekly.")
                         for i in range(12)]}
    planted = write_share(root/"share22", docs)
    write_notebook(root/"curate22.ipynb", [
        """
        from forge_nb.config import PipelineConfig, CurateConfig, CurateInput
        from forge_nb.widgets.curate_preview import CuratePreview
        cc = CurateConfig(inputs=[CurateInput(name="handbook", path="share22/handbook")], filters={"min_words": 5})
        cp = CuratePreview(PipelineConfig(name="cur22", runs_dir="runs22", curate=cc), n=1000)
        cp
        """])
    page = open_and_run_all(browser, lab, "curate22.ipynb", ".forge-curate-preview .forge-form", artifacts_dir)
    w = page.locator(".forge-curate-preview")
    w.locator("button.jupyter-button:has-text('Preview')").click()
    status = w.locator(".forge-preview-status")
    status.wait_for(timeout=60000)
    assert f"{sum(1 for _ in (root/'share22'/'handbook').iterdir())} of" in status.inner_text(), status.inner_text()
    marks = w.locator("mark.forge-pii")
    wait_until(lambda: marks.count() > 0, 15, "highlighted placeholders")
    kinds = set(w.locator("mark.forge-pii").evaluate_all("els => els.map(e => e.dataset.kind)"))
    assert {"EMAIL", "PHONE", "CARD"} <= kinds, kinds
    text = w.inner_text()
    assert not any(v in text for v in PLANTED_PII.values()), "a planted value is on the page"
    for path in planted["broken"]: assert path.split("/", 1)[1] in text, path       # each broken file named
    assert w.locator("svg").count() and "curation funnel" in w.inner_html()
    w.screenshot(path=str(artifacts_dir/"curate-preview-shown.png"))

    # a stricter threshold typed into the form: the next preview keeps nothing and says why
    w.locator(".lm-TabBar-tabLabel:text-is('filters')").first.click()
    box = w.locator(".forge-f-filters-min_words input").first
    box.fill("500"); box.press("Tab")
    w.locator("button.jupyter-button:has-text('Preview')").click()
    wait_until(lambda: "0 documents kept" in status.inner_text(), 60, "the stricter preview")
    assert "too_short" in w.inner_text()
    box.fill("5"); box.press("Tab")
    w.locator("button.jupyter-button:has-text('Preview')").click()
    wait_until(lambda: "0 documents kept" not in status.inner_text() and marks.count() > 0, 60, "the relaxed preview")
    kept = int(status.inner_text().split(":")[-1].split()[0])

    # Launch: the curate stage on this machine; its sources, read from disk, hold what the preview kept
    launch = w.locator(".forge-launch-panel button.jupyter-button:has-text('Launch')")
    wait_until(lambda: not launch.is_disabled(), 15, "Launch enabled")
    launch.click()
    w.locator(".forge-job-id").wait_for(timeout=60000)
    out = root/"runs22"/"cur22"/"curate"/"sources"/"handbook.jsonl"
    wait_until(out.exists, 240, f"{out} written by the launched stage")
    rows = [json.loads(l) for l in out.read_text().splitlines() if l.strip()]
    assert len(rows) == kept, (len(rows), kept)
    assert not any(v in r["text"] for r in rows for v in PLANTED_PII.values())
    w.screenshot(path=str(artifacts_dir/"curate-preview-launched.png"))
