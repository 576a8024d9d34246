"""The widgets in a real JupyterLab, driven by Debian's Chromium through Playwright (never `playwright install`).

A notebook is written into a temporary folder (never into nbs/), opened in JupyterLab served on 127.0.0.1, and its
cells are run from the Run menu. The tests then type into the generated form, click Launch, and check what the
kernel and the cluster did: the config the kernel holds, the job SLURM accepted (sacct, jobs.json), and the points
the job monitor plots from the job's metrics.jsonl. Screenshots go to test-artifacts/."""
import json, os, re, secrets, shutil, signal, socket, subprocess, sys, textwrap, time, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.browser      # Chromium missing: skipped, or failed in CI (the `chromium` fixture, conftest.py)

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

@pytest.fixture(scope="module")
def lab(tmp_path_factory, chromium):
    "JupyterLab on 127.0.0.1 serving a scratch folder, with its own config/data/runtime dirs; stopped as a process group."
    root = tmp_path_factory.mktemp("lab")
    scratch = root/".scratch"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ["JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR",
                "JUPYTERLAB_WORKSPACES_DIR", "IPYTHONDIR"]:
        (scratch/var).mkdir(parents=True); env[var] = str(scratch/var)
    notif = scratch/"JUPYTERLAB_SETTINGS_DIR"/"@jupyterlab"/"apputils-extension"/"notification.jupyterlab-settings"
    notif.parent.mkdir(parents=True); notif.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # the kernel must be this venv's Python: point the (fresh) data dir's kernelspec at it
    ks = scratch/"JUPYTER_DATA_DIR"/"kernels"/"python3"; ks.mkdir(parents=True)
    (ks/"kernel.json").write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                              "display_name": "Python 3", "language": "python"}))
    port, token = _free_port(), secrets.token_hex(16)
    log = open(root/".scratch"/"lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip", "127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", "--allow-root", f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).read(); break
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
                pytest.fail(f"JupyterLab did not start; log:\n{(root/'.scratch'/'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield {"root": root, "base": base, "token": token}
    os.killpg(proc.pid, signal.SIGTERM)
    try: proc.wait(20)
    except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    log.close()

def write_notebook(path:Path, cells:list[str]):
    nb = {"cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "source": textwrap.dedent(c).strip(),
                     "execution_count": None, "outputs": []} for i, c in enumerate(cells)],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))

@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                                    "--disable-component-update", "--disable-sync"])
        yield b
        b.close()

def open_and_run_all(browser, lab, name:str, ready_selector:str, artifacts_dir:Path, timeout_s:float=90):
    "Open notebook `name` in JupyterLab, run all its cells from the Run menu, wait for `ready_selector`."
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    try:
        # a workspace of its own per notebook, reset: no tab of an earlier test is restored
        page.goto(f"{lab['base']}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={lab['token']}")
        page.wait_for_selector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status="idle"]',
                               timeout=timeout_s * 1000)
        deadline = time.time() + timeout_s
        while True:
            # a slow kernel start can leave JupyterLab's "Select Kernel" dialog over the page: accept the default kernel
            accept = page.locator(".jp-Dialog button.jp-mod-accept")
            if accept.count(): accept.first.click()
            try: page.click(".jp-Cell .jp-InputArea-editor", timeout=10000)
            except Exception:                      # e.g. the dialog appeared just now: look again
                if time.time() > deadline: raise
                continue
            page.click('.lm-MenuBar-itemLabel:text-is("Run")')
            page.click('.lm-Menu-itemLabel:text-is("Run All Cells")')
            # a Run All sent while the kernel is still connecting can be lost: if no cell has started, send it again
            try:
                page.wait_for_function("() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) "
                                       ".jp-InputPrompt')].some(e => /[0-9*]/.test(e.textContent))", timeout=15000)
                break
            except Exception:
                if time.time() > deadline: raise
        page.wait_for_selector(ready_selector, timeout=max(1.0, deadline - time.time()) * 1000)
    except Exception:
        page.screenshot(path=str(artifacts_dir/f"browser-failed-{Path(name).stem}.png"), full_page=True); raise
    return page

def wait_until(fn, timeout_s:float, what:str, poll:float=0.5):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        v = fn()
        if v: return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")

def test_form_edits_reach_the_kernel(lab, browser, artifacts_dir):
    "Typing into the generated form updates the kernel's config; an invalid value shows its error next to the field."
    t0 = time.time()
    out = lab["root"]/"form.yaml"
    write_notebook(lab["root"]/"form_e2e.ipynb", [
        """
        from pathlib import Path
        from forge_nb.config import PipelineConfig
        from forge_nb.widgets.forms import ConfigForm
        form = ConfigForm(PipelineConfig(name="start"))
        form.on_change(lambda cfg: Path("form.yaml").write_text(cfg.to_yaml() if cfg else "INVALID"))
        form
        """])
    page = open_and_run_all(browser, lab, "form_e2e.ipynb", ".forge-form .forge-f-name input", artifacts_dir)
    name = page.locator(".forge-form .forge-f-name input")
    name.fill("bad name!")
    page.wait_for_selector(".forge-f-name .forge-field-error", timeout=15000)
    assert "should match pattern" in page.locator(".forge-f-name .forge-field-error").inner_text()
    wait_until(lambda: out.exists() and out.read_text() == "INVALID", 15, "the kernel to see the invalid name")
    page.screenshot(path=str(artifacts_dir/"browser-form-error.png"))
    name.fill("browser-run")
    wait_until(lambda: out.exists() and "name: browser-run" in out.read_text(), 15, "the kernel to get the new name")
    # the kernel writes the file a moment before the browser applies the widget update that clears the error
    page.wait_for_selector(".forge-f-name .forge-field-error", state="detached", timeout=15000)
    # a number in another tab: open the pretrain tab, change steps
    page.click('.lm-TabBar-tabLabel:text-is("pretrain")')
    steps = page.locator(".forge-f-pretrain-steps input")
    steps.fill("42"); steps.press("Tab")
    wait_until(lambda: "steps: 42" in out.read_text(), 15, "the kernel to get pretrain.steps=42")
    page.screenshot(path=str(artifacts_dir/"browser-form.png"), full_page=True)
    page.close()
    print(f"form browser test: {time.time() - t0:.1f} s")

def test_mix_builder_and_sizer_respond_in_jupyterlab(lab, browser, artifacts_dir):
    "The mix builder and the model sizer render, and moving the depth dial in the browser updates the figures."
    t0 = time.time()
    for name, n, w in [("wiki", 60, 40), ("code", 15, 10)]:
        (lab["root"]/f"{name}.jsonl").write_text("".join(json.dumps({"text": f"{name} doc {i} " * w}) + "\n" for i in range(n)))
    write_notebook(lab["root"]/"dials_e2e.ipynb", [
        """
        from forge_nb.config import DataConfig, SourceConfig, PipelineConfig
        from forge_nb.widgets.mix_builder import MixBuilder
        mix = MixBuilder(DataConfig(sources=[SourceConfig(name="wiki", path="wiki.jsonl"), SourceConfig(name="code", path="code.jsonl")],
                                    strategy="static", weights=[0.5, 0.5]))
        mix
        """,
        """
        from forge_nb.widgets.sizer import ModelSizer
        sizer = ModelSizer(PipelineConfig())
        sizer
        """,
        """
        from forge_nb.widgets.studio import Studio
        studio = Studio(PipelineConfig(data=mix.data_config))
        studio
        """])
    page = open_and_run_all(browser, lab, "dials_e2e.ipynb", ".forge-studio", artifacts_dir)
    mixer = page.locator(".forge-mix-builder").first
    assert mixer.locator(".forge-mix-table tr").count() == 3          # header + 2 sources
    assert mixer.locator("svg .forge-bar").count() == 4               # planned + realized, 2 sources
    mixer.screenshot(path=str(artifacts_dir/"browser-mix-builder.png"))
    table = page.locator(".forge-sizer-table").first
    before = table.inner_text()
    handle = page.locator(".forge-model-sizer").first.locator(".widget-slider .noUi-handle").first
    handle.focus()
    for _ in range(4): handle.press("ArrowRight")
    wait_until(lambda: "8 layers" in table.inner_text(), 15, "the sizer to redraw for depth 8 after four steps of the dial")
    assert table.inner_text() != before
    page.locator(".forge-model-sizer").first.screenshot(path=str(artifacts_dir/"browser-sizer.png"))
    # the studio: its mix tab holds a builder with the same two sources
    studio = page.locator(".forge-studio")
    studio.locator('.lm-TabBar-tabLabel:text-is("data mix")').click()
    wait_until(lambda: studio.locator(".forge-mix-table tr").count() == 3, 15, "the studio's mix builder")
    studio.screenshot(path=str(artifacts_dir/"browser-studio.png"))
    page.close()
    print(f"mix builder + sizer browser test: {time.time() - t0:.1f} s")

def _sacct(job_id:str) -> list[str]:
    out = subprocess.run(["sacct", "-j", job_id, "-n", "-P", "-X", "-o", "JobID,State,Partition"], capture_output=True, text=True, timeout=30)
    return [l for l in out.stdout.splitlines() if l.strip()]

@pytest.mark.slurm
def test_form_launch_and_monitor_on_slurm(slurm_cluster, lab, browser, artifacts_dir):
    """Edit the config in the form, try a request the cluster cannot hold (Launch disabled, reason shown), then launch the
    pretraining stage on the local SLURM cluster from the Launch button; check sacct and jobs.json, and that the
    monitor shows the job's state and plots the points of its metrics.jsonl."""
    t0 = time.time()
    root = lab["root"]
    texts = {"prose": [f"The quick brown fox {i} jumps over the lazy dog number {i * 7}. " * 6 for i in range(300)],
             "code": [f"def f_{i}(x):\n    return x * {i} + {i % 7}\n" * 3 for i in range(300)]}
    for k, v in texts.items():
        (root/f"{k}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in v))
    run_name = f"e2e-{secrets.token_hex(3)}"
    cfg = dict(name=run_name, runs_dir=str(root/"runs"), stages=["data", "pretrain"],
               data=dict(sources=[dict(name=k, path=str(root/f"{k}.jsonl")) for k in texts], strategy="static",
                         weights=[0.5, 0.5], seq_len=64, val_docs=8),
               tokenizer=dict(vocab_size=300, train_bytes=100_000),
               model=dict(depth=2, aspect_ratio=32, head_dim=32, max_seq_len=64),
               pretrain=dict(steps=30, micro_batch_size=4, log_every=2, eval_every=10, save_every=100, eval_batches=1,
                             optim=dict(warmup_steps=2)),
               resources=dict(cluster="slurm", partition="cpu", time_min=10))
    (root/"e2e_config.json").write_text(json.dumps(cfg))
    write_notebook(root/"launch_e2e.ipynb", [
        """
        import json
        from pathlib import Path
        import ipywidgets as W
        from forge_nb.config import PipelineConfig
        from forge_nb.data.store import run_data_stage
        cfg = PipelineConfig.model_validate(json.loads(Path("e2e_config.json").read_text()))
        run_data_stage(cfg, Path(cfg.runs_dir)/cfg.name)   # the token store the launched pretraining reads
        """,
        """
        from forge_nb.widgets.forms import ConfigForm
        from forge_nb.widgets.launch_panel import LaunchPanel
        from forge_nb.widgets.monitor import JobMonitor
        form = ConfigForm(cfg)
        monitor = JobMonitor(interval=2.0, autorefresh=True, runs_dir=cfg.runs_dir)
        panel = LaunchPanel(form, stage="pretrain", monitor=monitor)
        W.VBox([form, panel, monitor])
        """])
    page = open_and_run_all(browser, lab, "launch_e2e.ipynb", ".forge-launch-panel .forge-sbatch-preview", artifacts_dir, timeout_s=120)
    launch = page.locator(".forge-launch-panel button.jupyter-button:has-text('Launch')")
    # 1. edit the form: fewer steps
    page.click('.lm-TabBar-tabLabel:text-is("pretrain")')
    steps = page.locator(".forge-f-pretrain-steps input")
    steps.fill("24"); steps.press("Tab")
    # 2. a request the partition cannot hold disables Launch, with the reason
    nodes = page.locator(".forge-launch-panel .widget-text:has-text('nodes') input")
    nodes.fill("9"); nodes.press("Tab")
    page.wait_for_selector(".forge-launch-problem:has-text('9 nodes asked')", timeout=20000)
    assert launch.is_disabled()
    page.locator(".forge-launch-panel").screenshot(path=str(artifacts_dir/"browser-launch-refused.png"))
    nodes.fill("1"); nodes.press("Tab")
    wait_until(lambda: page.locator(".forge-launch-problem").count() == 0 and launch.is_enabled(), 20, "Launch to be enabled again")
    assert "#SBATCH --partition=cpu" in page.locator(".forge-sbatch-preview").inner_text()
    # 3. launch
    launch.click()
    page.wait_for_selector(".forge-job-id code", timeout=60000)
    job_id = page.locator(".forge-job-id code").inner_text().strip()
    assert re.fullmatch(r"\d+", job_id), job_id
    run_dir = root/"runs"/run_name
    registry = json.loads((run_dir/"jobs.json").read_text())
    assert any(str(r["job_id"]) == job_id and r["stage"] == "pretrain" for r in (registry if isinstance(registry, list) else registry["jobs"]))
    wait_until(lambda: _sacct(job_id), 30, f"sacct to list job {job_id}")
    import yaml
    assert yaml.safe_load((run_dir/"config.yaml").read_text())["pretrain"]["steps"] == 24   # the form's edit reached the job
    page.screenshot(path=str(artifacts_dir/"browser-launched.png"), full_page=True)
    # 4. the monitor: live state and points from metrics.jsonl
    state = page.locator(".forge-job-card .forge-job-state")
    wait_until(lambda: state.count() and state.inner_text() in ("RUNNING", "COMPLETED"), 120, "the monitor to show the job running")
    points, ended = page.locator(".forge-plot-loss circle.forge-point"), ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
    wait_until(lambda: points.count() > 0 or state.inner_text() in ended, 180, "loss points in the monitor")
    page.screenshot(path=str(artifacts_dir/"browser-monitor-live.png"), full_page=True)
    assert state.inner_text() not in ("FAILED", "CANCELLED", "TIMEOUT"), \
        f"job {job_id} ended {state.inner_text()}; its log tail in the monitor:\n" + page.locator(".forge-log-tail").inner_text()[-2500:]
    wait_until(lambda: state.inner_text() in ended, 300, "the job to end")
    page.click(".forge-job-monitor button.jupyter-button:has-text('Refresh')")
    time.sleep(2)
    page.locator(".forge-job-monitor").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts_dir/"browser-monitor.png"), full_page=True)
    page.locator(".forge-job-monitor").screenshot(path=str(artifacts_dir/"browser-monitor-widget.png"))
    assert state.inner_text() == "COMPLETED", page.locator(".forge-log-tail").inner_text()[-2000:]
    wait_until(lambda: any(job_id in l and "COMPLETED" in l for l in _sacct(job_id)), 90, f"sacct to record job {job_id} COMPLETED")   # accounting trails the controller
    from forge_nb.runs import read_metrics
    losses = [r for r in read_metrics(run_dir/"pretrain"/"metrics.jsonl") if "loss" in r]
    assert losses and losses[-1]["step"] == 24
    wait_until(lambda: points.count() == len(losses), 15, f"{len(losses)} loss points (one per metrics.jsonl record)")
    assert page.locator(".forge-plot-tokens_per_s circle.forge-point").count() == len(losses)
    bpb = sum(1 for r in read_metrics(run_dir/"pretrain"/"metrics.jsonl") for k in r
              if "bpb" in k and "unigram" not in k and isinstance(r[k], float))   # the unigram baselines are reference lines
    assert bpb > 0, "the stage logged no per-domain bits per byte"
    wait_until(lambda: page.locator(".forge-plot-bpb circle.forge-point").count() == bpb, 15, f"{bpb} bits-per-byte points")
    page.close()
    print(f"form → launch → monitor browser test on SLURM: {time.time() - t0:.1f} s")

@pytest.mark.slurm
def test_monitor_follows_a_slurm_job_live(slurm_cluster, lab, browser, artifacts_dir):
    """A small function submitted to SLURM through the launcher (`launch_fn`) appends metrics records over a few
    seconds; the monitor, refreshing in its background thread, shows them arriving, then COMPLETED; a second monitor
    made from the run name alone (what a restarted kernel does) shows the same job and points."""
    t0 = time.time()
    root = lab["root"]
    run_name = f"live-{secrets.token_hex(3)}"
    write_notebook(root/"monitor_e2e.ipynb", [
        f"""
        import time
        from forge_nb.config import PipelineConfig
        from forge_nb.launch import launch_fn
        from forge_nb.widgets.monitor import JobMonitor

        def write_metrics(run_dir, n=12):
            import time
            from forge_nb.runs import RunDir
            log = RunDir(run_dir).stage("pretrain").metrics
            for step in range(n):
                log.log(step=step * 10, loss=4.0 / (1 + step), tokens_per_s=1000.0 + 10 * step, **{{"val/docs/bpb": 2.0 - 0.05 * step}})
                time.sleep(0.7)
            return n

        cfg = PipelineConfig(name="{run_name}", runs_dir="runs", resources=dict(cluster="slurm", partition="cpu", time_min=5))
        job = launch_fn(write_metrics, "runs/{run_name}", cfg=cfg, stage="pretrain")
        monitor = JobMonitor(job, interval=1.0, autorefresh=True)
        monitor
        """,
        f"""
        JobMonitor("{run_name}", runs_dir="runs")   # found again by run name alone
        """])
    page = open_and_run_all(browser, lab, "monitor_e2e.ipynb", ".forge-job-monitor .forge-job-state", artifacts_dir, timeout_s=120)
    first = page.locator(".forge-job-monitor").first
    points = first.locator(".forge-plot-loss circle.forge-point")
    seen = set()
    deadline = time.time() + 120
    while time.time() < deadline:
        seen.add(points.count())
        if first.locator(".forge-job-state").inner_text() == "COMPLETED" and points.count() == 12: break
        time.sleep(0.3)
    assert first.locator(".forge-job-state").inner_text() == "COMPLETED", first.locator(".forge-log-tail").inner_text()
    assert points.count() == 12 and len(seen - {0, 12}) >= 1, f"points seen while it ran: {sorted(seen)}"   # it was live
    job_id = first.locator(".forge-job-card code").inner_text().strip()
    wait_until(lambda: any(job_id in l and "COMPLETED" in l for l in _sacct(job_id)), 90, f"sacct to record job {job_id} COMPLETED")   # accounting trails the controller
    first.screenshot(path=str(artifacts_dir/"browser-monitor-live-job.png"))
    # the second monitor (made from the run name) has the same job; refresh it and count its points
    second = page.locator(".forge-job-monitor").nth(1)
    second.locator("button.jupyter-button:has-text('Refresh')").click()
    wait_until(lambda: second.locator(".forge-plot-loss circle.forge-point").count() == 12, 30, "the reattached monitor's points")
    assert second.locator(".forge-job-card code").inner_text().strip() == job_id
    page.close()
    print(f"live monitor browser test on SLURM: {time.time() - t0:.1f} s")

# ------------------------------------------------------------------ issue 17: the widgets as a new user meets them

def _svg_box(loc) -> dict:
    b = loc.bounding_box(); assert b, "not rendered"; return b

def test_infeasible_plan_and_bpb_plot_in_jupyterlab(lab, browser, artifacts_dir):
    """A Studio whose pretraining budget (steps × batch × seq_len) needs more of a source than its epoch cap allows:
    the mix tab shows the infeasible plan, and Launch is disabled with the data stage's error before anything is
    submitted. A monitor's bits-per-byte plot: curves span the plot height, the unigram baselines are reference marks,
    the legend does not cover the title, and the log box shows the tail."""
    t0 = time.time()
    root = lab["root"]
    for name, n in [("prose", 40), ("code", 120)]:
        (root/f"{name}17.jsonl").write_text("".join(json.dumps({"text": f"{name} document {i} " * 30}) + "\n" for i in range(n)))
    write_notebook(root/"issue17_e2e.ipynb", [
        """
        from pathlib import Path
        from forge_nb.config import PipelineConfig
        from forge_nb.widgets.studio import Studio
        cfg = PipelineConfig(name="infeasible17", runs_dir="runs17", stages=["data", "pretrain"],
                             data=dict(sources=[dict(name="prose", path="prose17.jsonl"), dict(name="code", path="code17.jsonl")],
                                       strategy="static", weights=[0.5, 0.5], seq_len=64),
                             pretrain=dict(steps=2500, micro_batch_size=4))
        studio = Studio(cfg, stage="all")
        studio
        """,
        """
        from forge_nb.runs import RunDir
        from forge_nb.widgets.monitor import JobMonitor
        class Demo:   # a job's interface, backed by a run directory: no scheduler needed to draw the plots
            def __init__(self, run_dir): self.run_dir, self.stage, self.job_id, self.run_name = Path(run_dir), "pretrain", "17", "bpb17"
            def state(self): return "COMPLETED"
            def stdout(self, tail=15): return "\\n".join(f"step {i}" for i in range(300))
            def stderr(self, tail=15): return "\\n".join(f"warn {i}" for i in range(300))
        log = RunDir("runs17/bpb17").stage("pretrain").metrics
        log.log(step=0, **{"val/prose/unigram_bpb": 2.44, "val/code/unigram_bpb": 2.31})
        for s in range(1, 11): log.log(step=20 * s, loss=3.0 / s, **{"val/prose/bpb": 0.1 + 0.4 / s, "val/code/bpb": 0.08 + 0.3 / s})
        bpb_monitor = JobMonitor(Demo("runs17/bpb17"))
        bpb_monitor
        """])
    page = open_and_run_all(browser, lab, "issue17_e2e.ipynb", ".forge-job-monitor .forge-job-card .forge-job-state", artifacts_dir)
    mon = page.locator(".forge-job-monitor:has(.forge-job-card)")   # the demo monitor (the Studio's own sits in a closed tab)
    studio = page.locator(".forge-studio")
    # 8. the stages tag box's text input shows without a click; a long field name wraps instead of being cut off
    assert _svg_box(studio.locator(".forge-f-stages input").first)["width"] > 30, "the tag box's text input is hidden"
    studio.locator(".forge-f-stages").first.screenshot(path=str(artifacts_dir/"browser-17-stages-tags.png"))
    studio.locator('.lm-TabBar-tabLabel:text-is("pretrain")').first.click()
    name = studio.locator(".forge-f-pretrain-activation_checkpointing code")
    name.wait_for(timeout=15000)
    assert name.evaluate("e => e.getBoundingClientRect().right <= e.closest('.widget-html').getBoundingClientRect().right + 1"), "label cut off"
    studio.locator(".forge-f-pretrain-activation_checkpointing").screenshot(path=str(artifacts_dir/"browser-17-form-label.png"))
    studio.locator('.lm-TabBar-tabLabel:text-is("data")').first.click()
    # 1. the mix tab: the plan uses the pretraining budget and says it is infeasible
    studio.locator('.lm-TabBar-tabLabel:text-is("data mix")').click()
    studio.locator(".forge-mix-infeasible").wait_for(timeout=15000)
    text = studio.locator(".forge-mix-infeasible").inner_text()
    assert "infeasible mix plan" in text and "'prose'" in text, text
    assert "budget" in studio.locator(".forge-mix-budget").inner_text()
    studio.screenshot(path=str(artifacts_dir/"browser-17-mix-infeasible.png"))
    # ... and the launch tab refuses it, with the same error, before any submission
    studio.locator('.lm-TabBar-tabLabel:text-is("launch")').click()
    problem = studio.locator(".forge-launch-problem:has-text('infeasible mix plan')")
    problem.wait_for(timeout=15000)
    assert "'prose'" in problem.inner_text()
    # the mix tab and the launch check plan with the same budget (the data stage's `resolve_total_tokens`)
    budget = re.search(r"budget ([0-9,]+) tokens", studio.locator(".forge-mix-budget").inner_text()).group(1)
    assert f"of {budget} tokens" in problem.inner_text() and f"of {budget} tokens" in text, (budget, problem.inner_text())
    assert studio.locator(".forge-launch-panel button.jupyter-button:has-text('Launch')").is_disabled()
    assert not (root/"runs17"/"infeasible17"/"jobs.json").exists()
    studio.screenshot(path=str(artifacts_dir/"browser-17-launch-refused.png"))
    # 6. the bits-per-byte plot
    plot = mon.locator(".forge-plot-bpb svg")
    plot.scroll_into_view_if_needed()
    rect = _svg_box(plot.locator("rect").first)
    ys = [_svg_box(c)["y"] + _svg_box(c)["height"] / 2 for c in plot.locator("circle.forge-point").all()]
    assert len(ys) == 20, f"{len(ys)} bpb points (baselines must not be points)"
    span = (max(ys) - min(ys)) / rect["height"]
    assert span > 0.95, f"the curves cover {span:.0%} of the plot height"
    marks = [g.text_content() for g in plot.locator(".forge-hline").all()]
    assert any("prose unigram 2.44" in m for m in marks) and any("code unigram 2.31" in m for m in marks), marks
    title = _svg_box(plot.locator("text:has-text('bits per byte')").first)
    for leg in plot.locator("text[y='27']").all():   # legend entries: below the title, not over it
        b = _svg_box(leg); assert b["y"] >= title["y"] + title["height"] - 1, (b, title)
    # 5. the log box shows the tail (the last line visible, without scrolling)
    box = mon.locator(".forge-log-box")
    last = _svg_box(box.locator("pre")); outer = _svg_box(box)
    assert last["y"] + last["height"] <= outer["y"] + outer["height"] + 2 and "warn 299" in box.inner_text()
    assert box.evaluate("e => e.scrollHeight > e.clientHeight + 10"), "the log box should scroll (two 15-line tails)"
    mon.screenshot(path=str(artifacts_dir/"browser-17-bpb-plot.png"))
    page.close()
    print(f"infeasible plan + bpb plot browser test: {time.time() - t0:.1f} s")

@pytest.mark.slurm
def test_recreated_studio_follows_its_run_and_says_why_a_stage_was_cancelled(slurm_cluster, lab, browser, artifacts_dir):
    """A kernel submits data → pretrain on SLURM and forgets the jobs (as a restart does); the data job's source is gone
    by the time it runs, so it really fails. A Studio made afresh for the run lists both jobs on creation, live (the
    data job is held until the Studio shows it), refreshes by itself (no auto-refresh ticked, no Refresh pressed) and the
    pretraining card says it was cancelled because the data job failed, with that job's one-line error."""
    t0 = time.time()
    root = lab["root"]
    run_name = f"dep17-{secrets.token_hex(3)}"
    (root/f"{run_name}.jsonl").write_text("".join(json.dumps({"text": f"doc {i} " * 40}) + "\n" for i in range(200)))
    write_notebook(root/"dep17_e2e.ipynb", [
        f"""
        import os, subprocess
        from pathlib import Path
        from forge_nb.config import PipelineConfig
        from forge_nb import launch as L
        cfg = PipelineConfig(name="{run_name}", runs_dir=str(Path("runs").absolute()), stages=["data", "pretrain"],
                             data=dict(sources=[dict(name="prose", path=str(Path("{run_name}.jsonl").absolute()))], seq_len=64),
                             tokenizer=dict(vocab_size=300, train_bytes=20_000), pretrain=dict(steps=5, micro_batch_size=2),
                             resources=dict(cluster="slurm", partition="cpu", time_min=5))
        held = cfg.model_copy(update={{"resources": cfg.resources.model_copy(update={{"sbatch_extra": {{"hold": ""}}}})}})
        data_job = L.launch(held, "data")   # submitted held (sbatch --hold), pending until the test has seen it live: a
                                            # `scontrol hold` after submitting raced the scheduler, which can start it at once
        os.remove("{run_name}.jsonl")                                        # the job will find its source gone: it fails
        pre_job = L.launch(cfg, "pretrain", depends_on=[data_job])
        Path("{run_name}.ids").write_text(data_job.job_id + " " + pre_job.job_id)
        del data_job, pre_job                                                # the kernel forgets the jobs, as a restart does
        """,
        """
        from forge_nb.widgets.studio import Studio
        studio = Studio(cfg)                                                 # made afresh: it finds the run's jobs itself
        studio
        """])
    page = open_and_run_all(browser, lab, "dep17_e2e.ipynb", ".forge-studio", artifacts_dir, timeout_s=120)
    data_id, pre_id = (root/f"{run_name}.ids").read_text().split()
    try: _recreated_studio_checks(page, data_id, pre_id, run_name, artifacts_dir)
    finally: subprocess.run(["scancel", data_id, pre_id], capture_output=True, timeout=30)   # a held or never-satisfied job would linger
    page.close()
    print(f"re-created Studio + cancelled-stage reason browser test on SLURM: {time.time() - t0:.1f} s")

def _recreated_studio_checks(page, data_id, pre_id, run_name, artifacts_dir):
    studio = page.locator(".forge-studio")
    studio.locator('.lm-TabBar-tabLabel:text-is("jobs")').click()
    cards = studio.locator(".forge-job-card")
    wait_until(lambda: cards.count() == 2, 20, "the Studio to list the run's two jobs")
    card = lambda job_id: studio.locator(f".forge-job-card:has(code:text-is('{job_id}'))")
    states = lambda: {j: card(j).locator(".forge-job-state").inner_text() for j in (data_id, pre_id)}
    wait_until(lambda: all(s == "PENDING" for s in states().values()), 30, "both jobs shown PENDING (live)")
    assert studio.locator(".forge-job-monitor input[type=checkbox]").first.is_checked(), "a live job is followed without ticking auto-refresh"
    studio.screenshot(path=str(artifacts_dir/"browser-17-studio-recreated-live.png"))
    subprocess.run(["scontrol", "release", data_id], check=True, timeout=30)
    # no click from here on: the jobs tab refreshes by itself
    reason = card(pre_id).locator(".forge-job-reason")
    wait_until(lambda: reason.count() and states()[data_id] == "FAILED", 180, "the pretraining card's reason and the data job FAILED")
    text = reason.inner_text()
    assert f"the data job {data_id} it waited on ended FAILED" in text and "does not exist" in text and run_name in text, text
    assert states()[pre_id] in ("CANCELLED", "PENDING"), states()
    studio.screenshot(path=str(artifacts_dir/"browser-17-cancelled-reason.png"))
