"""Cost of the experiment trackers per logged step: one pretraining-like `metrics.jsonl` record (loss, lr, grad norm,
tokens, tokens/s, memory: 6 numbers) appended through `MetricsLog.log`, alone (the baseline: what every stage does
anyway) and with a stage's `StageTracker` sending it to MLflow: a local SQLite store (`tracking.mlflow_uri` unset)
and an `mlflow server` on 127.0.0.1 (SQLite backend), started here. Medians over `--records` records, each sink in
the same process, the baseline measured in the same run; ratios against it.

    .venv/bin/python bench/bench_track.py                 # 200 records per case
    .venv/bin/python bench/bench_track.py --records 50 --no-server

Two figures per case: the time `MetricsLog.log` takes on the training thread (the record written and queued; the
sender thread does the requests), and the wall time from the first record until every record is in the tracker
(the stage's end waits for it), per record. Records are logged back to back here, so the sender batches them; a
stage logs every `log_every` steps, slower than a tracker answers, so there each record is one request.
"""
import argparse, os, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

def server(root:Path):
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    p = subprocess.Popen([str(Path(sys.executable).parent/"mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                          "--backend-store-uri", f"sqlite:///{root/'srv.db'}", "--artifacts-destination", str(root/"art")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).status == 200: return p, url
        except OSError: time.sleep(0.5)
    raise TimeoutError("mlflow server did not start")

def case(root:Path, name:str, sinks:list, uri:str|None, n:int) -> list:
    from forge_nb.config import PipelineConfig
    from forge_nb.runs import RunDir
    from forge_nb.track import StageTracker
    cfg = PipelineConfig(name=name, runs_dir=str(root), tracking={"sinks": sinks, "mlflow_uri": uri})
    run = RunDir.for_config(cfg); run.save_config(cfg)
    log, times = run.stage("pretrain").metrics, []
    tr = StageTracker(cfg, run.root, "pretrain").__enter__()
    t0 = time.perf_counter()
    for s in range(1, n + 1):
        t = time.perf_counter()
        log.log(step=s, loss=4.0 / s, lr=1e-3, grad_norm=0.5, tokens=s * 6144, tokens_per_s=20000.0 + s, mem_gb=0.4)
        times.append(time.perf_counter() - t)
    tr.__exit__(None, None, None)                     # waits until every queued record is sent
    return times, (time.perf_counter() - t0) / n

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--no-server", action="store_true", help="skip the mlflow server case")
    a = ap.parse_args()
    import torch
    print(f"cpu capability: {torch.backends.cpu.get_cpu_capability()}; load average: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        cases = [("metrics.jsonl only (baseline)", [], None), ("+ mlflow, local sqlite store", ["mlflow"], None)]
        proc = None
        if not a.no_server:
            proc, url = server(root); cases.append(("+ mlflow server on 127.0.0.1", ["mlflow"], url))
        try:
            res = {label: case(root, f"r{i}", sinks, uri, a.records) for i, (label, sinks, uri) in enumerate(cases)}
        finally:
            if proc: os.killpg(proc.pid, signal.SIGKILL)
    base = statistics.median(res[cases[0][0]][0])
    print(f"{'case':34} {'training thread: median ms/record':>34} {'p90 ms':>8} {'ratio':>7} {'until all sent: ms/record':>26}")
    for label, (ts, total) in res.items():
        med, p90 = statistics.median(ts), sorted(ts)[int(0.9 * len(ts))]
        print(f"{label:34} {med * 1e3:34.3f} {p90 * 1e3:8.3f} {med / base:7.1f} {total * 1e3:26.1f}")

if __name__ == "__main__": main()
