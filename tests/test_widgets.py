"""Widget state without a browser: ipywidgets 8 uses a dummy comm in plain Python, so forms, the launch panel,
the job monitor and the mix builder can be driven by setting values and clicking buttons."""
import json, subprocess, sys, time
from pathlib import Path
import pytest, yaml
import ipywidgets as W

from forge_nb.config import (PipelineConfig, DataConfig, SourceConfig, MixStageConfig, TokenizerConfig, ModelConfig,
                             OptimConfig, PretrainConfig, SFTConfig, RLConfig, ResourcesConfig, ConfigError, load_config)
from forge_nb.runs import RunDir
from forge_nb.widgets.forms import ConfigForm, field_kind
from forge_nb.widgets.launch_panel import LaunchPanel
from forge_nb.widgets.monitor import JobMonitor
from forge_nb.widgets.mix_builder import MixBuilder

ROOT = Path(__file__).resolve().parents[1]

def _inputs(widget):
    "Every leaf widget under `widget`."
    kids = getattr(widget, "children", None)
    if not kids: yield widget; return
    for k in kids: yield from _inputs(k)

CONFIGS = [SourceConfig(name="a", path="b", max_chars=10), MixStageConfig(weights=[1.0, 2.0], name="anneal"),
           DataConfig(sources=[SourceConfig(name="x", path="x.txt"), SourceConfig(name="y", path="y/*.jsonl", kind="jsonl")],
                      strategy="static", weights=[0.25, 0.75], stages=[MixStageConfig(weights=[1, 1])]),
           TokenizerConfig(path="tok/"), ModelConfig(depth=6, n_kv_heads=2), OptimConfig(schedule="wsd"),
           PretrainConfig(steps=7), SFTConfig(dataset="chat.jsonl"), RLConfig(method="dpo"),
           ResourcesConfig(cluster="slurm", partition="gpu", env={"A": "1"}, setup=["module load x"], sbatch_extra={"exclusive": ""}),
           PipelineConfig(name="t", stages=["data", "pretrain", "sft"])]

@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_form_round_trips_config(cfg):
    form = ConfigForm(cfg)
    assert form.config == cfg and form.errors == []

@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_form_yaml_round_trip(cfg, tmp_path):
    form = ConfigForm(cfg)
    assert yaml.safe_load(form.to_yaml()) == cfg.to_dict()
    p = form.save(tmp_path/"c.yaml")
    assert ConfigForm.from_yaml(p, type(cfg)).config == cfg

def test_every_field_has_an_input_with_its_description():
    form = ConfigForm(PipelineConfig(data=DataConfig(sources=[SourceConfig(name="a", path="a")], stages=[MixStageConfig(weights=[1])])))
    for path, cls in [("pretrain.optim.lr", OptimConfig), ("data.sources.0.kind", SourceConfig), ("resources.env", ResourcesConfig),
                      ("stages", PipelineConfig), ("data.stages.0.weights", MixStageConfig), ("model.depth", ModelConfig)]:
        w = form.widget_for(path)
        assert isinstance(w, W.ValueWidget), path
    # one row per scalar field, each showing the field's own Field(description=...)
    html = "".join(getattr(w, "value", "") for w in _inputs(form) if isinstance(w, W.HTML))
    for cls in [OptimConfig, ResourcesConfig, ModelConfig]:
        for name, f in cls.model_fields.items():
            if field_kind(f.annotation)[0] not in ("model", "model_list"):
                import html as h
                assert h.escape(f.description) in html, f"{cls.__name__}.{name}"

def test_widget_types_follow_annotations():
    form = ConfigForm(PipelineConfig())
    assert isinstance(form.widget_for("pretrain.precision"), W.Dropdown)
    assert form.widget_for("pretrain.precision").options == ("auto", "fp32", "bf16") or \
        [v for _, v in form.widget_for("pretrain.precision").options] == ["auto", "fp32", "bf16"]
    assert isinstance(form.widget_for("pretrain.compile"), W.Checkbox)
    assert isinstance(form.widget_for("pretrain.steps"), W.IntText)
    assert isinstance(form.widget_for("pretrain.optim.lr"), W.FloatText)
    assert isinstance(form.widget_for("pretrain.peak_flops"), W.Text)      # Optional: may be empty
    assert isinstance(form.widget_for("stages"), W.TagsInput)

def test_changing_widgets_changes_config():
    form = ConfigForm(PipelineConfig())
    seen = []
    form.on_change(seen.append)
    form.widget_for("name").value = "my-run"
    form.widget_for("pretrain.steps").value = 33
    form.widget_for("pretrain.compile").value = True
    form.widget_for("pretrain.peak_flops").value = "1e15"
    form.widget_for("model.arch").value = "qwen2"
    form.widget_for("resources.env").value = "{HF_HOME: /tmp/hf}"
    c = form.config
    assert (c.name, c.pretrain.steps, c.pretrain.compile, c.pretrain.peak_flops, c.model.arch, c.resources.env) == \
        ("my-run", 33, True, 1e15, "qwen2", {"HF_HOME": "/tmp/hf"})
    assert seen[-1] == c
    form.widget_for("pretrain.peak_flops").value = ""
    assert form.config.pretrain.peak_flops is None

@pytest.mark.parametrize("path,value,error", [
    ("pretrain.optim.lr", -1.0, "must be > 0"),
    ("name", "bad name!", "should match pattern"),
    ("pretrain.steps", 0, "must be >= 1"),
    ("pretrain.peak_flops", "fast", "expected a number"),
    ("resources.env", "{a: 1", "not valid YAML"),
    ("data.weights", "[1, 2]", "expected 0 weights"),
])
def test_invalid_input_shows_error_and_no_config(path, value, error):
    form = ConfigForm(PipelineConfig())
    form.widget_for(path).value = value
    assert form.config is None
    assert [l for l, _ in form.errors] == [path] and error in form.errors[0][1]
    row = next(r for r in _rows(form) if f"forge-f-{path.replace('.', '-')}" in r._dom_classes)
    assert error.replace(">", "&gt;") in row.children[2].value and "forge-field-error" in row.children[2].value
    assert "1 error" in form.status.value
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")): form.to_yaml()

def _rows(w):
    if "forge-field" in getattr(w, "_dom_classes", ()): yield w; return
    for k in getattr(w, "children", ()): yield from _rows(k)

def test_source_list_editor(tmp_path):
    form = ConfigForm(DataConfig())
    ed = form.list_editor("sources")
    ed.add_button.click()
    assert form.config is None and {l for l, _ in form.errors} == {"sources.0.name", "sources.0.path"}
    form.widget_for("sources.0.name").value = "wiki"
    form.widget_for("sources.0.path").value = "wiki.txt"
    assert form.config.sources == [SourceConfig(name="wiki", path="wiki.txt")]
    ed.box.children[0].children[0].children[1].click()   # Remove
    assert form.config.sources == []

def test_from_run(tmp_path):
    cfg = PipelineConfig(name="r1", runs_dir=str(tmp_path), pretrain=PretrainConfig(steps=3))
    run = RunDir.for_config(cfg); run.save_config(cfg)
    assert ConfigForm.from_run(run.root).config == cfg

def test_launch_panel_follows_form_and_blocks_bad_requests():
    form = ConfigForm(PipelineConfig(stages=["data"]))
    panel = LaunchPanel(form, load_partitions=False)
    panel.nodes.value = 3
    assert panel.config.resources.nodes == 3
    form.widget_for("pretrain.optim.lr").value = 0.0
    assert panel.launch_button.disabled and "pretrain.optim.lr" in panel.problems_box.value
    form.widget_for("pretrain.optim.lr").value = 0.01
    assert panel.config.pretrain.optim.lr == 0.01
    panel.stage.value = "pretrain"
    assert panel.launch_button.disabled and "stage `pretrain`" in panel.problems_box.value

def test_monitor_plots_metrics_of_a_run(tmp_path):
    class FileJob:   # the Job interface, backed by a real run directory
        def __init__(s, rd): s.run_dir, s.stage, s.run_name, s.job_id = rd, "pretrain", Path(rd).name, "7"
        def state(s): return "RUNNING"
        def done(s): return False
        def stdout(s, n=20): return "hello"
        def stderr(s, n=20): return ""
        def cancel(s): pass
    log = RunDir(tmp_path/"r").stage("pretrain").metrics
    for i in range(5): log.log(step=i * 10, loss=4.0 - i * 0.1, tokens_per_s=100.0 + i, **{"val/a/bpb": 2.0 - i * 0.01})
    mon = JobMonitor(FileJob(tmp_path/"r"))
    for k in ("loss", "bpb", "tokens_per_s"): assert mon.plots[k].value.count("forge-point") == 5, k
    log.log(step=50, loss=3.4)
    mon.refresh_button.click()
    assert mon.plots["loss"].value.count("forge-point") == 6
    assert "RUNNING" in mon.cards[0].state_box.value and "hello" in mon.cards[0].log.value

def test_mix_builder_config(tmp_path):
    (tmp_path/"a.jsonl").write_text("".join(json.dumps({"text": "alpha " * 30 + str(i)}) + "\n" for i in range(20)))
    (tmp_path/"b.txt").write_text("beta text\n" * 5)
    mb = MixBuilder(DataConfig(sources=[SourceConfig(name="a", path=str(tmp_path/"a.jsonl"))], strategy="static", weights=[1.0]))
    mb.path_in.value, mb.name_in.value, mb.kind_in.value = str(tmp_path/"b.txt"), "b", "text"
    mb.add_button.click()
    assert [s.name for s in mb.data_config.sources] == ["a", "b"]
    assert mb.scans["a"]["docs"] == 20 and mb.scans["b"]["docs"] == 1
    mb.strategy.value = "temperature"; mb.temperature.value = 10.0
    d = mb.data_config
    assert (d.strategy, d.temperature, d.weights) == ("temperature", 10.0, None)

def test_widgets_import_without_torch():
    code = ("import sys, forge_nb.widgets.forms, forge_nb.widgets.launch_panel, forge_nb.widgets.monitor, "
            "forge_nb.widgets.mix_builder, forge_nb.charts, forge_nb.widgets.studio; "
            "import importlib.util as u; sz = u.find_spec('forge_nb.widgets.sizer'); "
            "sz and __import__('forge_nb.widgets.sizer'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"

def test_monitor_reattaches_to_a_real_job_by_run_name(tmp_path):
    "A job launched through the launcher (local executor) is found again by run name, as after a kernel restart."
    from forge_nb.launch import launch_fn
    def _write_metrics(run_dir, n=4):   # nested: pickled by value, the job's process need not import this test file
        from forge_nb.runs import RunDir
        log = RunDir(run_dir).stage("pretrain").metrics
        for step in range(n): log.log(step=step, loss=3.0 - step * 0.1, tokens_per_s=500.0, **{"val/a/bpb": 1.5})
        return n
    cfg = PipelineConfig(name="reattach", runs_dir=str(tmp_path))
    job = launch_fn(_write_metrics, str(tmp_path/"reattach"), cfg=cfg, stage="pretrain")
    assert job.wait(timeout_s=120) == "COMPLETED"
    mon = JobMonitor(runs_dir=tmp_path)
    mon.run_input.value = "reattach"
    mon.reattach_button.click()
    assert [j.job_id for j in mon.jobs] == [job.job_id]
    assert "COMPLETED" in mon.cards[0].state_box.value
    assert mon.plots["loss"].value.count("forge-point") == 4 and mon.plots["bpb"].value.count("forge-point") == 4

def test_launch_panel_launches_locally_and_feeds_the_monitor(tmp_path):
    (tmp_path/"n.jsonl").write_text("".join(json.dumps({"text": f"note {i} about foxes and dogs {i * 3}"}) + "\n" for i in range(100)))
    cfg = PipelineConfig(name="local", runs_dir=str(tmp_path/"runs"), stages=["data"],
                         data=DataConfig(sources=[SourceConfig(name="n", path=str(tmp_path/"n.jsonl"))], seq_len=32, val_docs=4),
                         tokenizer=TokenizerConfig(vocab_size=300, train_bytes=5000))
    mon = JobMonitor()
    panel = LaunchPanel(ConfigForm(cfg), stage="data", monitor=mon)
    assert not panel.launch_button.disabled, panel.problems
    panel.launch_button.click()
    assert len(panel.jobs) == 1 and panel.jobs[0].job_id in panel.job_box.value and mon.jobs == panel.jobs
    assert panel.jobs[0].wait(timeout_s=120) == "COMPLETED"
    from forge_nb.launch import read_registry
    assert [r["job_id"] for r in read_registry(tmp_path/"runs"/"local")] == [panel.jobs[0].job_id]

def test_sizer_matches_model_functions():
    import forge_nb.model as M
    from forge_nb.widgets.sizer import ModelSizer
    sz = ModelSizer(PipelineConfig(), vocab_size=8000)
    sz.depth.value, sz.arch.value = 12, "qwen2"
    mc = ModelConfig(depth=12, arch="qwen2")
    assert sz.figures["params"] == M.count_params(mc, 8000)
    assert sz.figures["flops_per_token"] == M.flops_per_token(mc, 8000, 1024)
    e = M.estimate_time(mc, 8000, None, 1024, device="H100 SXM", n_devices=1, mfu=0.4)
    assert sz.figures["estimate"]["seconds"] == e["seconds"]

def test_launch_panel_all_stages_chains_them(tmp_path):
    (tmp_path/"n.jsonl").write_text("".join(json.dumps({"text": f"note {i} about foxes and dogs {i * 3}"}) + "\n" for i in range(100)))
    cfg = PipelineConfig(name="chain", runs_dir=str(tmp_path/"runs"), stages=["data"],
                         data=DataConfig(sources=[SourceConfig(name="n", path=str(tmp_path/"n.jsonl"))], seq_len=32, val_docs=4),
                         tokenizer=TokenizerConfig(vocab_size=300, train_bytes=5000))
    panel = LaunchPanel(cfg, stage="all")
    assert "chained" not in panel.preview.value          # local: no sbatch script
    jobs = panel.launch()
    assert isinstance(jobs, list) and [j.stage for j in jobs] == ["data"]
    assert jobs[0].wait(timeout_s=120) == "COMPLETED"

@pytest.mark.slurm
def test_launch_panel_reads_partitions_and_previews_sbatch(slurm_cluster):
    from forge_nb.launch import cluster_partitions
    panel = LaunchPanel(PipelineConfig(resources=ResourcesConfig(cluster="slurm")))
    names = [p["name"] for p in cluster_partitions()]
    assert [v for _, v in panel.partition.options][1:] == names
    panel.partition.value = "gpu"
    panel.gpus.value = 99
    assert panel.launch_button.disabled and "99 GPUs per node asked" in panel.problems_box.value
    panel.gpus.value = 1
    assert not panel.launch_button.disabled, panel.problems
    assert "#SBATCH --partition=gpu" in panel.preview.value and "#SBATCH --gpus-per-node=1" in panel.preview.value
