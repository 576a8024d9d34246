"""Experiment trackers against real stores (issue 26): an `mlflow server` on 127.0.0.1 with a SQLite backend, started and
stopped by the test; W&B offline files parsed as written (`.wandb` records); trackio's local SQLite. Every comparison
recounts `metrics.jsonl` here (its own parse), never the code's tally. The pipelines are the tiny settings
(`demo --size tiny`: data → pretrain → SFT → RL in seconds of training; `tiny_config`: data + pretrain) run as local
jobs, so the trackers are fed from the job processes, where the stages write their records."""
import json, math, os, shutil, signal, socket, struct, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

from forge_nb.runs import save_config
from forge_nb.demo import tiny_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

def recount(path) -> dict:
    "`{(key, step): value}` of the numbers in a metrics.jsonl, parsed here (last record wins, as a resumed stage logs again)."
    out = {}
    if not Path(path).exists(): return out                                  # a stage that logs nothing (data)
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if "step" not in r: continue
        for k, v in r.items():
            if k in ("time", "step", "stage") or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v): continue
            out[(k, int(r["step"]))] = float(v)
    return out

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

class MLflowServer:
    "`mlflow server` on 127.0.0.1: a free port, SQLite backend and artifact folder under `root`; start, wait, stop."
    def __init__(self, root:Path):
        self.root, self.port, self.proc = root, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"
    def start(self, timeout:float=180):
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root/"server.log", "a")
        self.proc = subprocess.Popen([str(BIN/"mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                                      "--backend-store-uri", f"sqlite:///{self.root/'mlflow.db'}",
                                      "--artifacts-destination", str(self.root/"artifacts")],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.time()
        while time.time() - t0 < timeout:
            assert self.proc.poll() is None, (self.root/"server.log").read_text()[-3000:]
            try:
                if urllib.request.urlopen(self.url + "/health", timeout=2).status == 200: return time.time() - t0
            except OSError: pass
            time.sleep(0.5)
        raise TimeoutError(f"mlflow server did not answer in {timeout} s:\n" + (self.root/"server.log").read_text()[-3000:])
    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait(30)
    def up(self) -> bool:
        try: return urllib.request.urlopen(self.url + "/health", timeout=2).status == 200
        except OSError: return False

@pytest.fixture
def mlflow_server(tmp_path):
    srv = MLflowServer(tmp_path/"mlflow-server")
    srv.started_s = srv.start()
    yield srv
    srv.stop()

def forge(*args, cwd, timeout=900):
    return subprocess.run([str(BIN/"forge-nb"), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)

def mlflow_runs(url:str, experiment:str="forge_nb"):
    "(parent runs, {stage: child run}) of the experiment, read with MLflow's own client."
    from mlflow.tracking import MlflowClient
    c = MlflowClient(tracking_uri=url)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    return c, parents, children

def mlflow_points(c, run) -> dict:
    out = {}
    for key in run.data.metrics:
        for m in c.get_metric_history(run.info.run_id, key): out[(key, m.step)] = m.value
    return out

def history_len(c, run) -> int: return sum(len(c.get_metric_history(run.info.run_id, k)) for k in run.data.metrics)

def test_demo_tiny_into_mlflow_server(tmp_path, mlflow_server):
    """`forge-nb demo --size tiny` with `tracking: [mlflow]` and a model name to register: one parent run with the four
    stages as nested runs, each stage's metrics equal to its metrics.jsonl (every value, no more, no fewer), the
    config as parameters, the reports as artifacts, the RL model as a registered version."""
    t0 = time.time()
    r = forge("demo", "--size", "tiny", "--runs-dir", tmp_path/"runs", "--set", "tracking.sinks=[mlflow]",
              "--set", f"tracking.mlflow_uri={mlflow_server.url}", "--set", "tracking.register_model=demo-tiny", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path/"runs"/"demo-tiny"
    c, parents, children = mlflow_runs(mlflow_server.url)
    assert [p.info.run_name for p in parents] == ["demo-tiny"]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert sorted(children) == ["data", "pretrain", "rl", "sft"]
    for stage, ch in children.items():
        assert ch.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert ch.info.status == "FINISHED", stage
        want = recount(run/stage/"metrics.jsonl")
        assert mlflow_points(c, ch) == want, stage
        assert history_len(c, ch) == len(want), stage                       # nothing sent twice
        assert ch.data.params["pretrain.steps"] == "6"
    assert len(recount(run/"pretrain"/"metrics.jsonl")) > 20
    arts = lambda rid, path="": {f.path for f in c.list_artifacts(rid, path)}
    assert {"report.html", "config.yaml"} <= arts(parent.info.run_id)
    assert {"mix_report.md", "mix_report.json"} <= arts(children["data"].info.run_id)
    assert "report.json" in arts(children["rl"].info.run_id)                # the compliance report
    assert "model/config.json" in arts(children["rl"].info.run_id, "model")
    (mv,) = c.search_model_versions("name='demo-tiny'")
    assert mv.run_id == children["rl"].info.run_id
    # the secrets of the environment never reach the server's files
    print(f"demo tiny with the mlflow sink: {time.time() - t0:.1f} s; server start {mlflow_server.started_s:.1f} s")

def test_killed_tracker_loses_nothing(tmp_path, mlflow_server):
    """The MLflow server killed while pretraining runs: the run completes, the job's log says what was not sent, and
    `forge-nb track sync RUN` after a restart makes MLflow equal to metrics.jsonl (a second sync sends nothing)."""
    cfg = tiny_config(tmp_path/"runs", name="k", steps=24, log_every=1, eval_every=12, save_every=12)
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_validate({"sinks": ["mlflow"], "mlflow_uri": mlflow_server.url})})
    save_config(cfg, tmp_path/"k.yaml")
    proc = subprocess.Popen([str(BIN/"forge-nb"), "run", "k.yaml"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run, t0 = tmp_path/"runs"/"k", time.time()
    metrics = run/"pretrain"/"metrics.jsonl"
    while not (metrics.exists() and len(recount(metrics)) >= 5):
        assert proc.poll() is None and time.time() - t0 < 600, "pretraining never logged"
        time.sleep(0.1)
    mlflow_server.stop()
    killed_at = max(s for _, s in recount(metrics))
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    done = recount(metrics)
    assert max(s for _, s in done) == 24 and killed_at < 24
    errs = "".join(p.read_text() for p in (run/"logs").glob("*_log.err"))
    assert "forge_nb: tracking: mlflow" in errs and "stage 'pretrain'" in errs and "were not sent" in errs, errs[-3000:]
    assert f"forge-nb track sync {run}" in errs
    mlflow_server.start()
    c, _, children = mlflow_runs(mlflow_server.url)
    before = mlflow_points(c, children["pretrain"])
    assert set(before) < set(done)                                           # some sent, not all
    r = forge("track", "sync", "k", "--runs-dir", tmp_path/"runs", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    c, parents, children = mlflow_runs(mlflow_server.url)
    for stage in ("data", "pretrain"):
        assert mlflow_points(c, children[stage]) == recount(run/stage/"metrics.jsonl"), stage
        assert history_len(c, children[stage]) == len(recount(run/stage/"metrics.jsonl")), stage
    assert f"pretrain: {len(done) - len(before)} of {len(done)} metric values sent" in r.stdout, r.stdout
    r = forge("track", "sync", "k", "--runs-dir", tmp_path/"runs", cwd=tmp_path)
    assert "pretrain: 0 of" in r.stdout, r.stdout

def wandb_history(path:Path) -> dict:
    "`{(key, step): value}` from a `.wandb` file: its leveldb-log blocks parsed here, each full record a `Record` protobuf."
    from wandb.proto import wandb_internal_pb2 as pb
    data, out, pos, buf, B = path.read_bytes(), {}, 7, b"", 32768
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if B - pos % B < 7: pos += B - pos % B; continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7]); pos += 7
        if kind == 0 and n == 0: break
        buf += data[pos:pos + n]; pos += n
        if kind in (1, 4):                                                   # FULL or LAST
            rec = pb.Record(); rec.ParseFromString(buf); buf = b""
            if rec.WhichOneof("record_type") != "history": continue
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            for k, v in row.items():
                if not k.startswith("_"): out[(k, int(row["_step"]))] = float(v)
    return out

def test_wandb_offline_and_trackio_without_network(tmp_path):
    """`tracking: [wandb, trackio]` on the tiny data + pretrain pipeline in a process with no network (`unshare -n`):
    W&B's offline files and trackio's SQLite hold exactly what metrics.jsonl holds."""
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode: pytest.skip("unshare -n is not allowed here")
    cfg = tiny_config(tmp_path/"runs", name="w", steps=6)
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_validate({"sinks": ["wandb", "trackio"], "experiment": "wt"})})
    save_config(cfg, tmp_path/"w.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRACKIO_"))}
    r = subprocess.run(["unshare", "-n", str(BIN/"forge-nb"), "run", "w.yaml", "--foreground"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "forge_nb: tracking:" not in r.stderr, r.stderr[-3000:]
    run = tmp_path/"runs"/"w"
    rec = json.loads((run/"tracking.json").read_text())
    for stage in ("data", "pretrain"):
        want = recount(run/stage/"metrics.jsonl")
        (f,) = (run/"tracking"/"wandb").glob(f"offline-run-*-{rec['wandb']['stages'][stage]}/run-*.wandb")
        assert wandb_history(f) == want, stage
    assert len(recount(run/"pretrain"/"metrics.jsonl")) > 10
    # trackio: its SQLite database, read with sqlite3 (one row per logged step, the values as JSON)
    import sqlite3
    (db,) = (tmp_path/"runs"/"trackio").glob("wt*.db")
    con = sqlite3.connect(db)
    tables = {n for (n,) in con.execute("select name from sqlite_master where type='table'")}
    assert "metrics" in tables, tables
    cols = [d[1] for d in con.execute("pragma table_info(metrics)")]
    name_col = "run_name" if "run_name" in cols else "run"
    for stage in ("data", "pretrain"):
        got = {}
        for step, js in con.execute(f"select step, metrics from metrics where {name_col}=?", (f"w/{stage}",)):
            for k, v in json.loads(js).items(): got[(k, int(step))] = float(v)
        assert got == recount(run/stage/"metrics.jsonl"), stage
