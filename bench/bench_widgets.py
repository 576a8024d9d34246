"""Render latency of each widget: construct it and produce its first render (`_repr_mimebundle_`, what Jupyter
asks for when a cell shows it, plus `ipywidgets.embed.embed_snippet` of its whole state, what a saved notebook holds).
No model is loaded and no cluster is needed. Target: under 300 ms each. Usage: python bench/bench_widgets.py [--repeat N] [--quick]
The same-run baseline is a hand-written ipywidgets form of 20 labelled text fields in a VBox (what a notebook author
would write by hand), built and rendered the same way."""
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path
from benchlib import emit, figure

def build_cases(tmp:Path) -> dict:
    from forge_nb.config import PipelineConfig, DataConfig, SourceConfig
    src = []
    for name, n, width in [("wiki", 400, 80), ("code", 200, 20), ("mail", 100, 40)]:
        p = tmp/f"{name}.jsonl"
        p.write_text("".join(json.dumps({"text": f"{name} document {i} " * width}) + "\n" for i in range(n)))
        src.append(SourceConfig(name=name, path=str(p)))
    data = DataConfig(sources=src, strategy="static", weights=[0.5, 0.3, 0.2])
    cfg = PipelineConfig(name="bench", runs_dir=str(tmp/"runs"), data=data)
    run = tmp/"runs"/"bench"
    from forge_nb.runs import RunDir
    log = RunDir(run).stage("pretrain").metrics
    for s in range(0, 2000, 10): log.log(step=s, loss=5 - s / 1000, tokens_per_s=1e4, **{"val/wiki/bpb": 2 - s / 4000})
    class RunJob:  # a finished job of a real run directory, for the monitor
        run_dir, stage, run_name, job_id = run, "pretrain", "bench", "1"
        def state(self): return "COMPLETED"
        def done(self): return True
        def stdout(self, n=20): return "done"
        def stderr(self, n=20): return ""
        def cancel(self): pass
    def forms():
        from forge_nb.widgets.forms import ConfigForm
        return ConfigForm(cfg)
    def forms_all_open():
        from forge_nb.widgets.forms import ConfigForm
        f = ConfigForm(cfg)
        for n in f._form._nested_fields:      # open every tab and accordion: the worst case
            n.build()
            for m in n.build()._nested_fields: m.build()
        return f
    def launch_panel():
        from forge_nb.widgets.launch_panel import LaunchPanel
        return LaunchPanel(cfg, load_partitions=False)
    def monitor():
        from forge_nb.widgets.monitor import JobMonitor
        return JobMonitor(RunJob())
    def mix_builder():
        from forge_nb.widgets.mix_builder import MixBuilder
        return MixBuilder(data)
    def sizer():
        from forge_nb.widgets.sizer import ModelSizer
        return ModelSizer(cfg)
    def studio():
        from forge_nb.widgets.studio import Studio
        return Studio(cfg)
    def plain_form():
        import ipywidgets as W
        return W.VBox([W.Text(description=f"field_{i}", value=str(i)) for i in range(20)])
    return {"plain ipywidgets form (20 fields)": plain_form, "ConfigForm(PipelineConfig)": forms, "ConfigForm, all tabs opened": forms_all_open, "LaunchPanel": launch_panel, "JobMonitor (200 records)": monitor,
            "MixBuilder (3 sources)": mix_builder, "ModelSizer": sizer, "Studio (all of them)": studio}

def measure(make, repeat:int) -> dict:
    import ipywidgets.embed as E
    build, render, embed = [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter(); w = make()
        t1 = time.perf_counter(); w._repr_mimebundle_()
        t2 = time.perf_counter(); E.embed_snippet([w])
        t3 = time.perf_counter()
        build.append(t1 - t0); render.append(t2 - t1); embed.append(t3 - t2)
        w.close_all() if hasattr(w, "close_all") else None
    med = lambda xs: 1000 * statistics.median(xs)
    return {"build_ms": med(build), "render_ms": med(render), "embed_ms": med(embed),
            "first_ms": 1000 * (build[0] + render[0]), "total_ms": med([a + b for a, b in zip(build, render)])}

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="two repeats")
    args = ap.parse_args()
    if args.quick: args.repeat = 2
    t0 = time.perf_counter()
    import ipywidgets, forge_nb.widgets.forms  # noqa: F401
    print(f"import ipywidgets + forge_nb.widgets.forms: {1000 * (time.perf_counter() - t0):.0f} ms")
    print(f"{'widget':30s} {'first build+render':>19s} {'median build':>13s} {'render':>8s} {'build+render':>13s} {'embed':>8s}")
    worst, rows = 0.0, {}
    with tempfile.TemporaryDirectory() as d:
        for name, make in build_cases(Path(d)).items():
            try: r = measure(make, args.repeat)
            except ImportError as e: print(f"{name:30s} not measured: {e}"); continue
            rows[name] = r
            if not name.startswith("plain"): worst = max(worst, r["total_ms"])
            print(f"{name:30s} {r['first_ms']:17.0f} ms {r['build_ms']:10.0f} ms {r['render_ms']:5.1f} ms "
                  f"{r['total_ms']:10.0f} ms {r['embed_ms']:5.0f} ms")
    print(f"slowest median build+render: {worst:.0f} ms (target < 300 ms) -> {'OK' if worst < 300 else 'TOO SLOW'}")
    base = rows.get("plain ipywidgets form (20 fields)", {}).get("total_ms")
    emit("widgets", [figure(f"{n} build+render", r["total_ms"], "ms", "plain ipywidgets form (20 fields)" if base else None, base,
                            better="lower", note="target < 300 ms") for n, r in rows.items() if not n.startswith("plain")],
         quick=args.quick, repeat=args.repeat)
    return 0 if worst < 300 else 1

if __name__ == "__main__":
    sys.exit(main())
