"""Widget state without a browser: ipywidgets 8 uses a dummy comm in plain Python, so forms, the launch panel,
the job monitor and the mix builder can be driven by setting values and clicking buttons."""
import json, subprocess, sys, time
from pathlib import Path
import pytest, yaml
import ipywidgets as W

from forge_nb.config import (PipelineConfig, DataConfig, SourceConfig, MixStageConfig, TokenizerConfig, ModelConfig,
                             OptimConfig, PretrainConfig, SFTConfig, RLConfig, ResourcesConfig, ConfigError, load_config)
from forge_nb.runs import RunDir, read_metrics
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

def test_mix_builder_names_a_source_after_its_file_when_the_name_is_empty(tmp_path):
    "The installed module, not the notebook: `Path` was imported only in a `#| hide` cell, so this click raised NameError."
    (tmp_path/"wiki_dump.jsonl").write_text("".join(json.dumps({"text": f"document number {i} " * 5}) + "\n" for i in range(8)))
    mb = MixBuilder()
    mb.path_in.value, mb.name_in.value = str(tmp_path/"wiki_dump.jsonl"), ""
    mb.add_button.click()
    assert [s.name for s in mb.data_config.sources] == ["wiki_dump"] and mb.scans["wiki_dump"]["docs"] == 8
    assert "added wiki_dump" in mb.add_message.value and "forge-field-error" not in mb.add_message.value
    assert (mb.name_in.value, mb.path_in.value) == ("", "")       # the row is cleared for the next source

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

def test_sizer_figures_match_a_real_model():
    """The sizer's figures against independent counts of the model its dials build: parameters as transformers counts
    them (`num_parameters`), FLOPs per token as PyTorch's FlopCounterMode counts a real forward and backward (eager
    attention), less the norm gains and biases that `6N` counts as weights and a FLOP counter does not."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from forge_nb.model import build_model
    from forge_nb.widgets.sizer import ModelSizer
    sz = ModelSizer(PipelineConfig(), vocab_size=8000)
    sz.depth.value, sz.arch.value, sz.seq_len.value = 4, "qwen2", 128
    mc = sz.model_config
    assert (mc.depth, mc.arch, mc.max_seq_len) == (4, "qwen2", 128)
    torch.manual_seed(0); m = build_model(mc, 8000, attn_implementation="eager")
    assert sz.figures["params"]["total"] == m.num_parameters()
    assert sz.figures["params"]["embedding"] == m.get_input_embeddings().weight.numel()
    x = torch.randint(0, 8000, (1, 128))
    with FlopCounterMode(display=False) as fc: m(input_ids=x, labels=x, use_cache=False).loss.backward()
    vectors = sum(t.numel() for t in m.parameters() if t.ndim == 1)
    assert fc.get_total_flops() == round((sz.figures["flops_per_token"] - 6 * vectors) * 128), (fc.get_total_flops(), sz.figures["flops_per_token"])
    assert sz.figures["estimate"]["flops"] == sz.figures["flops_per_token"] * sz.figures["token_budget"]

def _scheduler(job_id: str) -> dict:
    "What SLURM itself holds for a job: `scontrol show job` as a dict, plus squeue's dependency column (`%E`)."
    out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, check=True).stdout
    info = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    info["squeue_E"] = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%E"], capture_output=True, text=True).stdout.strip()
    return info

@pytest.mark.slurm
def test_launch_panel_all_stages_chains_them_on_slurm(slurm_cluster, tmp_path):
    """"all stages (chained)" on the local SLURM cluster with a config of every implemented stage: one job per stage,
    in order, each held by `afterok` on the job before it, as the scheduler reports it (scontrol and squeue, not our
    objects). The jobs get a begin time 10 minutes ahead, so all are still pending (dependencies unfulfilled) when
    read; they are cancelled at the end, nothing runs."""
    from forge_nb.config import STAGES, RLConfig
    from forge_nb.demo import demo_task
    stages = [n for n, st in STAGES.items() if st.implemented]
    assert len(stages) >= 2, stages
    cfg = PipelineConfig(name="chain", runs_dir=str(tmp_path/"runs"), stages=stages,
                         resources=ResourcesConfig(cluster="slurm", partition="cpu", time_min=5, sbatch_extra={"begin": "now+600"}))
    panel = LaunchPanel(cfg, stage="all")      # the default RL method (GRPO) without its policy and prompts: refused before submitting
    assert panel.launch_button.disabled and "rl.policy: required for method 'grpo'" in panel.problems, panel.problems
    task = demo_task(tmp_path/"task", n_chat=8, n_prompts=4, n_heldout=2)
    cfg = cfg.model_copy(update={"rl": RLConfig(policy=str(task["policy"]), prompts=str(task["prompts"]))})
    panel = LaunchPanel(cfg, stage="all")
    assert "chained" in panel.preview.value and not panel.launch_button.disabled, panel.problems
    panel.launch_button.click()
    ids = [j.job_id for j in panel.jobs]
    try:
        assert [j.stage for j in panel.jobs] == stages and len(set(ids)) == len(stages), panel.job_box.value
        seen = [_scheduler(i) for i in ids]
        assert [s["JobName"] for s in seen] == [f"chain-{n}" for n in stages]
        assert seen[0]["Dependency"] == "(null)" and seen[0]["squeue_E"] in ("", "(null)"), seen[0]
        for prev, s in zip(ids, seen[1:]):
            assert s["Dependency"] == f"afterok:{prev}(unfulfilled)", (s["JobName"], s["Dependency"])
            assert s["squeue_E"] == f"afterok:{prev}(unfulfilled)", (s["JobName"], s["squeue_E"])
            assert s["JobState"] == "PENDING"
    finally:
        subprocess.run(["scancel"] + ids, check=False)

@pytest.mark.slurm
def test_launch_panel_reads_partitions_and_previews_sbatch(slurm_cluster, tmp_path):
    from forge_nb.launch import cluster_partitions
    (tmp_path/"forge-run"/"data").mkdir(parents=True)     # what the pretrain stage (the panel's default) reads
    panel = LaunchPanel(PipelineConfig(runs_dir=str(tmp_path), resources=ResourcesConfig(cluster="slurm")))
    names = [p["name"] for p in cluster_partitions()]
    assert [v for _, v in panel.partition.options][1:] == names
    panel.partition.value = "gpu"
    panel.gpus.value = 99
    assert panel.launch_button.disabled and "99 GPUs per node asked" in panel.problems_box.value
    panel.gpus.value = 1
    assert not panel.launch_button.disabled, panel.problems
    assert "#SBATCH --partition=gpu" in panel.preview.value and "#SBATCH --gpus-per-node=1" in panel.preview.value


# --- the SFT and RL tabs build configs that run (a tiny chat model, a few steps, in this process) -----------------------

@pytest.fixture(scope="module")
def chat_task(tmp_path_factory):
    "The RL demo task's files and a tiny chat model (tokenizer with a generation-marked template + 2 SFT steps)."
    from forge_nb.demo import demo_task
    from forge_nb.trl_stage import tiny_chat_model
    d = tmp_path_factory.mktemp("chat")
    task = demo_task(d/"task", n_chat=60, n_prompts=8, n_heldout=2)
    return task, tiny_chat_model(d/"model", task["chat"], steps=2, batch_size=4)

def _type(form, path, value):
    "Set a field's input as a user does: text inputs get text, number inputs numbers, check boxes booleans."
    w = form.widget_for(path)
    w.value = value if not isinstance(w, (W.Text, W.Textarea)) or isinstance(value, str) else str(value)

def test_sft_tab_builds_a_config_that_runs(tmp_path, chat_task):
    "Every SFT field set through its widget (nested LoRA settings, a doc source from the list editor, one-per-line prompts, an optional path), then `form.config` trains and writes sft/final."
    from forge_nb.sft import run_sft
    task, model = chat_task
    (tmp_path/"handbook.md").write_text("# Refunds\n\nRefunds are paid within 14 days of a written request.\n\n"
                                        "# Support hours\n\nThe support desk answers from 9 to 17 on working days.\n\n"
                                        "Q: Who approves refunds?\nA: The billing team approves every refund.\n")
    form = ConfigForm(PipelineConfig(name="sfttab", runs_dir=str(tmp_path), stages=["sft"]))
    for path, v in [("sft.base_model", f" {model}\n"), ("sft.dataset", task["chat"]), ("sft.steps", 3), ("sft.max_seq_len", 128),
                    ("sft.micro_batch_size", 2), ("sft.lr", 1e-3), ("sft.warmup_steps", 0), ("sft.eval_every", 3), ("sft.save_every", 3),
                    ("sft.eval_examples", 4), ("sft.max_new_tokens", 4), ("sft.weights", "[3, 1]"), ("sft.heldout_fraction", 0.25),
                    ("sft.eval_prompts", "What is the price: Max?\nWho approves refunds?"),
                    ("sft.lora.enabled", True), ("sft.lora.r", 4), ("sft.lora.target_modules", "q_proj\nv_proj\n")]:
        _type(form, path, v)
    ed = form.list_editor("sft.doc_sources"); ed.add_button.click()
    _type(form, "sft.doc_sources.0.name", "handbook"); _type(form, "sft.doc_sources.0.path", str(tmp_path/"handbook.md"))
    cfg = form.config
    assert cfg is not None, form.errors
    sc = cfg.sft
    assert (sc.base_model, sc.steps, sc.weights, sc.lora.enabled, sc.lora.r, sc.lora.target_modules) == \
        (str(model), 3, [3.0, 1.0], True, 4, ["q_proj", "v_proj"])
    assert sc.eval_prompts == ["What is the price: Max?", "Who approves refunds?"]
    assert [s.path for s in sc.doc_sources] == [str(tmp_path/"handbook.md")]
    run_sft(cfg, tmp_path/"run", log=lambda *a, **k: None)
    sd = RunDir(tmp_path/"run").stage("sft")
    assert (sd.final/"config.json").exists() and not any(p.name.startswith("adapter_") for p in sd.final.iterdir())
    summ = json.loads((sd.root/"summary.json").read_text())
    assert summ["lora"] is True and summ["steps"] == 3
    built = [json.loads(l) for f in ("train", "heldout") for l in (sd.root/"examples"/f"{f}.jsonl").read_text().splitlines()]
    assert built and {e["source"] for e in built} == {"handbook"}
    ev = json.loads((sd.root/"eval.json").read_text())
    assert [g["prompt"] for g in ev["generations"]] == sc.eval_prompts

def test_rl_tab_builds_a_grpo_config_that_runs(tmp_path, chat_task):
    "The RL tab: method, model, policy and prompts, GRPO dials and LoRA set through the widgets; `form.config` runs GRPO and writes rl/final and the report."
    from forge_nb.rl import run_rl
    task, model = chat_task
    form = ConfigForm(PipelineConfig(name="rltab", runs_dir=str(tmp_path), stages=["rl"]))
    for path, v in [("rl.method", "grpo"), ("rl.base_model", str(model)), ("rl.policy", task["policy"]), ("rl.prompts", task["prompts"]),
                    ("rl.heldout_prompts", task["heldout"]), ("rl.steps", 2), ("rl.lr", 1e-3), ("rl.batch_size", 4), ("rl.num_generations", 2),
                    ("rl.max_completion_length", 8), ("rl.beta", 0.0), ("rl.loss_type", "dapo"), ("rl.lora.enabled", True), ("rl.lora.r", 4),
                    ("rl.report_samples", 1), ("rl.save_every", 2)]:
        _type(form, path, v)
    cfg = form.config
    assert cfg is not None, form.errors
    rc = cfg.rl
    assert (rc.method, rc.policy, rc.steps, rc.num_generations, rc.loss_type, rc.lora.enabled, rc.lora.r) == ("grpo", task["policy"], 2, 2, "dapo", True, 4)
    _type(form, "rl.batch_size", 3)          # not a multiple of the group size: the form says so and holds no config
    assert form.config is None and "num_generations" in form.errors[0][1]
    _type(form, "rl.batch_size", 4)
    run_rl(form.config, tmp_path/"run", log=lambda *a, **k: None)
    rl = tmp_path/"run"/"rl"
    assert (rl/"final"/"COMPLETE").exists() and (rl/"final"/"config.json").exists()
    assert [r["step"] for r in read_metrics(rl/"metrics.jsonl") if "reward" in r] == [1, 2]
    assert json.loads((rl/"report.json").read_text())["rules"]


def _cells(html_text: str, cls: str) -> list:
    "The rows (lists of cell texts) of the table with class `cls` in an HTML string."
    import html as h, re
    t = re.search(rf"<table class='{cls}'.*?</table>", html_text, re.S).group(0)
    return [[h.unescape(c) for c in re.findall(r"<td>(.*?)</td>", r, re.S)] for r in re.findall(r"<tr>(.*?)</tr>", t, re.S)][1:]

def test_studio_previews_sft_examples_of_the_doc_sources(tmp_path):
    "The studio's `sft examples` tab shows the examples the SFT stage would build from the form's `sft.doc_sources`: first examples, counts per source and template counted from the documents the test wrote, refreshed when the sources change."
    from collections import Counter
    from forge_nb.widgets.studio import Studio
    (tmp_path/"handbook").mkdir()   # one document per file: the held-out split is by document
    for i in range(12):
        (tmp_path/"handbook"/f"t{i:02d}.md").write_text(f"# Topic {i}\n\nTopic {i} is handled by team {i % 3} within {i + 2} days.\n\n"
                                                     + "Q: Who approves refunds?\nA: The billing team approves every refund.\n" * (i == 0))
    (tmp_path/"kb.jsonl").write_text("".join(json.dumps({"title": f"Plan {i}", "text": f"Plan {i} costs {10 * i} EUR a month and includes {i} seats."}) + "\n"
                                             for i in range(6)))
    studio = Studio(PipelineConfig(name="prev", runs_dir=str(tmp_path/"runs")))
    assert "sft examples" in studio.titles and studio.children[studio.titles.index("sft examples")] is studio.sft_preview
    pv = studio.sft_preview
    assert "No <code>sft.doc_sources</code>" in pv.output.value
    form = studio.form
    form.list_editor("sft.doc_sources").add_button.click()
    form.widget_for("sft.doc_sources.0.name").value = "handbook"
    form.widget_for("sft.doc_sources.0.path").value = str(tmp_path/"handbook")
    form.widget_for("sft.heldout_fraction").value = 0.3
    pv.button.click()

    def expected(sources):   # counted here from the documents this test wrote, per (source, template): [train, heldout]
        import hashlib           # the split: by document, held out when blake2b("seed:source:doc") % 10000 < fraction * 10000
        held = lambda src, doc: int.from_bytes(hashlib.blake2b(f"0:{src}:{doc}".encode(), digest_size=8).digest(), "little") % 10_000 < 3_000
        docs = {"handbook": [(f"t{i:02d}.md", ["section"] + ["faq"] * (i == 0)) for i in range(12)],   # a section each, one FAQ in t00
                "kb": [(f"Plan {i}", ["section"]) for i in range(6)]}                                    # a titled record: one section
        c = Counter()
        for src in sources:
            for doc, templates in docs[src.name]:
                for t in templates: c[(src.name, t, "heldout" if held(src.name, doc) else "train")] += 1
        return sorted([s, t, str(c[(s, t, "train")]), str(c[(s, t, "heldout")])] for s, t in {(s, t) for s, t, _ in c})

    got = _cells(pv.output.value, "forge-sft-counts")
    assert got == expected(form.config.sft.doc_sources), got
    assert {r[1] for r in got} == {"section", "faq"} and sum(int(r[2]) for r in got) > 0 and sum(int(r[3]) for r in got) > 0, got
    shown = _cells(pv.output.value, "forge-sft-examples")
    assert len(shown) == 5 and shown[0][:3] == ["handbook", "section", "Give an overview of Topic 0."], shown
    assert shown[1][:3] == ["handbook", "faq", "Who approves refunds?"] and shown[1][3].startswith("The billing team approves every refund.")
    # adding a source through the form refreshes the preview with no click
    form.list_editor("sft.doc_sources").add_button.click()
    form.widget_for("sft.doc_sources.1.name").value = "kb"
    form.widget_for("sft.doc_sources.1.path").value = str(tmp_path/"kb.jsonl")
    got = _cells(pv.output.value, "forge-sft-counts")
    assert got == expected(form.config.sft.doc_sources) and "kb" in {r[0] for r in got}, got
    # a path that does not exist: the error is shown, nothing raised
    form.widget_for("sft.doc_sources.1.path").value = str(tmp_path/"missing.jsonl")
    assert "does not exist" in pv.output.value and "forge-field-error" in pv.output.value
