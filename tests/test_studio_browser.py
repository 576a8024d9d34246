"""The Studio as a new user meets it (issue 28), in a real JupyterLab driven by Debian's Chromium through Playwright.

One config is typed into the Studio's form and the other tabs are checked to show that same config: sources added on
the config tab appear in the mix builder and "Use this mix" keeps them; a model edited in the form moves the sizer's
dials; a source path that is not there is an error beside the field and keeps Launch disabled; and the line beside
Launch, the monitor's cancel line and a card's ETA go once they are out of date. What the kernel holds is read back
from the YAML the form writes on every change. Screenshots go to test-artifacts/studio28-*.png."""
import json, time
import pytest
from test_browser import lab, browser, open_and_run_all, write_notebook, wait_until  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

def _docs(path, name, n=200):
    path.write_text("".join(json.dumps({"text": f"{name} document {i}: " + "the quick brown fox jumps over the lazy dog " * 4}) + "\n"
                            for i in range(n)))

def _labelled_input(scope, label:str):
    "The input of an ipywidgets text/number box by its description."
    return scope.locator(f".widget-inline-hbox:has(> label:text-is('{label}')) input").first

def test_studio_tabs_follow_the_form_and_messages_stay_current(lab, browser, artifacts_dir):
    t0 = time.time()
    root, out = lab["root"], lab["root"]/"studio28.yaml"
    for name in ("news", "code"): _docs(root/f"{name}28.jsonl", name)
    write_notebook(root/"studio28.ipynb", [
        """
        from pathlib import Path
        from forge_nb.config import PipelineConfig
        from forge_nb.widgets.studio import Studio
        studio = Studio(PipelineConfig(name="new28", runs_dir="runs28", data=dict(seq_len=64),
                                       pretrain=dict(steps=2, micro_batch_size=1)))
        studio.form.on_change(lambda cfg: Path("studio28.yaml").write_text(cfg.to_yaml() if cfg else "INVALID"))
        studio
        """])
    page = open_and_run_all(browser, lab, "studio28.ipynb", ".forge-studio .forge-form", artifacts_dir)
    studio = page.locator(".forge-studio")
    tab = lambda name: studio.locator(f".lm-TabBar-tabLabel:text-is('{name}')").first.click()
    status = studio.locator(".forge-form-status")
    kernel = lambda: out.read_text() if out.exists() else ""

    # 1 + 3: two sources added on the config tab, the second with a path that is not there
    tab("data")                                   # the form's section tabs open on the first section (curate)
    add = studio.locator(".forge-form button.jupyter-button:has-text('Add source')")
    for i, (name, path) in enumerate([("news", "news28.jsonl"), ("code", "nope28.jsonl")]):
        add.click()
        studio.locator(f".forge-f-data-sources-{i}-name input").fill(name)
        studio.locator(f".forge-f-data-sources-{i}-path input").fill(path)
    err = studio.locator(".forge-f-data-sources-1-path .forge-field-error")
    wait_until(lambda: err.count() and "does not exist" in err.inner_text(), 15, "the missing path's error beside the field")
    wait_until(lambda: "missing input" in status.inner_text(), 15, "the status line to name the missing input")
    assert "valid" not in status.inner_text()
    studio.screenshot(path=str(artifacts_dir/"studio28-missing-path.png"))
    tab("launch")
    launch = studio.locator(".forge-launch-panel button.jupyter-button:has-text('Launch')")
    studio.locator(".forge-launch-problem:has-text('nope28.jsonl')").wait_for(timeout=15000)
    problems = studio.locator(".forge-launch-problem").all_inner_texts()
    assert any("needs 'data" in p and "all stages" in p for p in problems), problems   # pretrain alone: the store is not made yet
    assert launch.is_disabled()
    studio.screenshot(path=str(artifacts_dir/"studio28-launch-refused.png"))
    tab("config")
    studio.locator(".forge-f-data-sources-1-path input").fill("code28.jsonl")
    wait_until(lambda: "✓ valid" in status.inner_text(), 15, "the form to be valid once the path exists")
    wait_until(lambda: "code28.jsonl" in kernel(), 15, "the kernel to hold both sources")

    # 1: the mix tab shows the form's two sources; Use this mix lists what it changes and keeps them
    tab("data mix")
    mix = studio.locator(".forge-mix-builder")
    wait_until(lambda: mix.locator(".forge-mix-table tr").count() == 3, 20, "the mix builder to show the form's 2 sources")
    changes = studio.locator(".forge-mix-changes")
    wait_until(lambda: "holds this mix already" in changes.inner_text(), 15, "the mix tab to agree with the form")
    assert studio.locator("button.jupyter-button:has-text('Use this mix')").is_disabled()
    mix.locator("button.widget-toggle-button:has-text('static')").click()
    wait_until(lambda: "data.strategy: temperature → static" in changes.inner_text(), 15, "the pending change to be listed")
    studio.screenshot(path=str(artifacts_dir/"studio28-mix-changes.png"))
    studio.locator("button.jupyter-button:has-text('Use this mix')").click()
    wait_until(lambda: "strategy: static" in kernel(), 15, "the kernel to get the static mix")
    text = kernel()
    assert "news28.jsonl" in text and "code28.jsonl" in text, text              # the sources were kept
    assert "✓ valid" in status.inner_text()

    # 2: a model edited in the form is what the model-size tab shows
    tab("config"); tab("model")
    studio.locator(".forge-f-model-depth input").fill("2")
    studio.locator(".forge-f-model-max_seq_len input").fill("128")
    tab("tokenizer")
    studio.locator(".forge-f-tokenizer-vocab_size input").fill("512")
    wait_until(lambda: "vocab_size: 512" in kernel() and "max_seq_len: 128" in kernel(), 15, "the kernel to get the model edits")
    tab("model size")
    sizer = studio.locator(".forge-model-sizer")
    wait_until(lambda: "2 layers" in sizer.locator(".forge-sizer-table").inner_text(), 15, "the sizer to show depth 2")
    assert _labelled_input(sizer, "vocab size").input_value() == "512"
    assert _labelled_input(sizer, "seq_len").input_value() == "128"
    mchanges = studio.locator(".forge-model-changes")
    wait_until(lambda: "holds this model already" in mchanges.inner_text(), 15, "the model tab to agree with the form")
    handle = sizer.locator(".widget-slider .noUi-handle").first
    handle.focus(); handle.press("ArrowRight")
    wait_until(lambda: "model.depth: 2 → 3" in mchanges.inner_text(), 15, "the sizer to list the depth change")
    studio.screenshot(path=str(artifacts_dir/"studio28-model-changes.png"))
    studio.locator("button.jupyter-button:has-text('Use this model')").click()
    wait_until(lambda: "depth: 3" in kernel(), 15, "the kernel to get depth 3")
    assert "vocab_size: 512" in kernel() and "max_seq_len: 128" in kernel()   # the form's other edits were not overwritten

    # 5: the launch tab: fields validate as typed; the line beside Launch goes once the request changes
    tab("launch")
    panel = studio.locator(".forge-launch-panel")
    panel.locator("select").first.select_option("data")
    wait_until(lambda: not launch.is_disabled(), 20, "Launch to be enabled for the data stage")
    nodes = _labelled_input(panel, "nodes")
    nodes.fill("2")                                                              # no Tab, no blur
    studio.locator(".forge-launch-problem:has-text('this machine only')").wait_for(timeout=15000)
    assert launch.is_disabled()
    nodes.fill("1")
    wait_until(lambda: not launch.is_disabled(), 15, "Launch to be enabled again")
    launch.click()
    submitted = panel.locator(".forge-job-id")
    submitted.wait_for(timeout=30000)
    assert "data" in submitted.inner_text() and "new28" in submitted.inner_text()
    studio.screenshot(path=str(artifacts_dir/"studio28-submitted.png"))
    _labelled_input(panel, "time (min)").fill("45")                              # a new request: the old answer goes
    submitted.wait_for(state="detached", timeout=15000)

    # 7: the data stage's card, once finished, does not look unfinished
    tab("jobs")
    card = studio.locator(".forge-job-monitor .forge-job-card").first
    card.wait_for(timeout=15000)
    wait_until(lambda: "COMPLETED" in card.inner_text(), 180, "the data job to complete (the monitor follows it by itself)", poll=2)
    wait_until(lambda: "this stage has no training steps" in card.inner_text(), 15, "the finished data card to say it has no steps")
    assert "no training steps yet" not in card.inner_text() and "0 metrics records" not in card.inner_text()
    assert "ETA" not in card.inner_text()
    studio.screenshot(path=str(artifacts_dir/"studio28-jobs.png"))
    page.close()
    print(f"Studio issue-28 browser test: {time.time() - t0:.1f} s")

def test_cancel_line_eta_and_stale_policy_table_in_jupyterlab(lab, browser, artifacts_dir):
    """A running job's card shows its ETA; after Cancel the card says CANCELLED with no ETA and the monitor's "cancel sent"
    line is gone. The policy editor greys its table and says it is stale while the policy is invalid, and re-scores once fixed."""
    t0 = time.time()
    write_notebook(lab["root"]/"stale28.ipynb", [
        """
        import time
        from pathlib import Path
        from forge_nb.config import PipelineConfig
        from forge_nb.runs import save_config
        from forge_nb.runs import RunDir
        from forge_nb.widgets.monitor import JobMonitor
        from forge_nb.widgets.policy_editor import PolicyEditor
        save_config(PipelineConfig(name="eta28", pretrain={"steps": 1000}), "runs28/eta28/config.yaml")
        log, now = RunDir("runs28/eta28").stage("pretrain").metrics, time.time()
        for s in (10, 20, 30): log.log(step=s, loss=4.0, time=now + s)
        class Running:   # a job's interface: running until cancelled
            def __init__(self): self.run_dir, self.stage, self.job_id, self.run_name, self._state = Path("runs28/eta28"), "pretrain", "28", "eta28", "RUNNING"
            def state(self): return self._state
            def cancel(self): self._state = "CANCELLED"
            def stdout(self, tail=15): return "step 30"
            def stderr(self, tail=15): return ""
        mon = JobMonitor(Running(), follow=False)
        mon
        """,
        """
        ed = PolicyEditor()
        ed
        """])
    page = open_and_run_all(browser, lab, "stale28.ipynb", ".forge-policy-editor .forge-policy-table", artifacts_dir)
    card = page.locator(".forge-job-card").first
    wait_until(lambda: "ETA" in card.inner_text(), 15, "the running card's ETA")
    card.locator("button.jupyter-button:has-text('Cancel')").click()
    wait_until(lambda: "CANCELLED" in card.inner_text(), 15, "the card to say CANCELLED")
    assert "ETA" not in card.inner_text() and "cancelled" in card.locator(".forge-progress-text").inner_text()
    assert "cancel sent" not in page.locator(".forge-job-monitor").first.inner_text()
    page.locator(".forge-job-monitor").first.screenshot(path=str(artifacts_dir/"studio28-cancelled-card.png"))
    editor = page.locator(".forge-policy-editor")
    box = editor.locator("textarea").first
    text = box.input_value()
    assert "terms: [AcmeCorp, Globex]" in text, text
    box.fill(text.replace("terms: [AcmeCorp, Globex]", "regex: ['(unclosed']"))
    wait_until(lambda: editor.locator(".forge-policy-stale").count() == 1, 15, "the table to be marked stale")
    assert editor.locator(".forge-stale-table").count() == 1
    editor.screenshot(path=str(artifacts_dir/"studio28-policy-stale.png"))
    box.fill(text)
    wait_until(lambda: editor.locator(".forge-policy-stale").count() == 0, 15, "the stale mark to go once the policy is valid")
    page.close()
    print(f"cancel line + stale policy table browser test: {time.time() - t0:.1f} s")
