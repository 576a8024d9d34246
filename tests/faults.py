"""Fault injection for the stages (used by tests/test_faults.py): run a stage in a fresh process, kill it (SIGKILL at a
step, at a wall-clock offset, or inside a chosen write through a hook the child installs), run it again, then check
that nothing finished was lost or left half-written and that the finished run equals an undisturbed one.

Write-window faults are deterministic: the child process wraps one function (e.g. `os.replace`, safetensors'
`save_file`, transformers' `TrainerState.save_to_json`) and on its n-th call kills itself with SIGKILL before the call,
after it, or after it with the written file cut to half its size ("torn": what a crash in the middle of the write
leaves; the file is the call's path argument, or the file its descriptor argument is open on, e.g. `os.fsync(fd)`). A hit is recorded in a file before the kill, so the count of injected faults is a count of real kills.
"""
import json, os, random, shutil, signal, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
ARTIFACTS = ROOT/"test-artifacts"

# The child: install the fault hook named by $FORGE_FAULT (JSON), then run one registered stage.
DRIVER = r'''
import importlib, json, os, signal, sys
spec = json.loads(os.environ.get("FORGE_FAULT") or "null")
def _die(note):
    with open(spec["hits"], "a") as f: f.write(json.dumps(note) + "\n"); f.flush(); os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
def _file_arg(a, k):
    for v in list(a) + list(k.values()):
        if isinstance(v, (str, os.PathLike)) and os.path.isfile(v): return os.fspath(v)
        if isinstance(v, int) and not isinstance(v, bool):             # a file descriptor (os.fsync): the file it is open on
            try: f = os.readlink(f"/proc/self/fd/{v}")
            except OSError: continue
            if os.path.isfile(f): return f
def _install(spec):
    mod, _, attr = spec["at"].partition(":")
    owner = importlib.import_module(mod)
    *path, name = attr.split(".")
    for p in path: owner = getattr(owner, p)
    orig, n = getattr(owner, name), [0]
    def hooked(*a, **k):
        if spec.get("caller") and sys._getframe(1).f_code.co_name != spec["caller"]: return orig(*a, **k)   # count only these calls
        n[0] += 1
        if n[0] != spec["nth"]: return orig(*a, **k)
        note = {"at": spec["at"], "nth": n[0], "how": spec["how"], "caller": sys._getframe(1).f_code.co_name,
                "args": [str(x)[:200] for x in a if isinstance(x, (str, os.PathLike))]}
        if spec["how"] == "before": _die(note)
        r = orig(*a, **k)
        if spec["how"] == "torn" and (f := _file_arg(a, k)):
            size = os.path.getsize(f)
            with open(f, "r+b") as fh: fh.truncate(size // 2)
            note["torn"] = [f, size]
        _die(note)
    setattr(owner, name, hooked)
if spec: _install(spec)
from forge_nb.config import load_config
from forge_nb.runs import stage_function
stage_function(sys.argv[1])(load_config(sys.argv[2]), sys.argv[3], log=lambda *a, **k: print(*a, flush=True))
'''


def start(stage: str, cfg_path: Path, run: Path, fault: dict | None = None, hits: Path | None = None,
          env: dict | None = None) -> subprocess.Popen:
    "Run `stage` of the config at `cfg_path` into `run` in a fresh process (one thread), with an optional write fault."
    e = {**os.environ, **ENV, **(env or {})}
    e.pop("FORGE_FAULT", None)
    if fault: e["FORGE_FAULT"] = json.dumps({**fault, "hits": str(hits)})
    return subprocess.Popen([sys.executable, "-c", DRIVER, stage, str(cfg_path), str(run)], env=e, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(p: subprocess.Popen, timeout: float = 900) -> str:
    "Wait for a run that must succeed; its output."
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"stage process failed ({p.returncode}):\n{out[-4000:]}"
    return out


def run_stage(stage: str, cfg_path: Path, run: Path, timeout: float = 900) -> float:
    "Run a stage to the end undisturbed; seconds it took."
    t = time.time(); finish(start(stage, cfg_path, run), timeout); return time.time() - t


def last_step(metrics: Path) -> int:
    "The highest `step` of a training record in a metrics file (0 if none)."
    from forge_nb.runs import read_metrics
    return max([r["step"] for r in read_metrics(metrics) if "event" not in r and any(k in r for k in ("loss", "reward"))], default=0)


def kill_at_step(p: subprocess.Popen, metrics: Path, step: int, timeout: float = 900) -> int|None:
    "SIGKILL `p` once `metrics` shows `step` (or later); the step seen, or None if the process ended first."
    t0 = time.time()
    while p.poll() is None:
        s = last_step(metrics)
        if s >= step:
            os.kill(p.pid, signal.SIGKILL); p.communicate(); return s
        assert time.time() - t0 < timeout, "stage did not reach the step"
        time.sleep(0.01)
    p.communicate(); return None


def kill_after(p: subprocess.Popen, seconds: float) -> bool:
    "SIGKILL `p` after `seconds`; False if it had already finished (no fault injected)."
    try: p.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL); p.communicate(); return True
    p.communicate(); return False


def kill_in_write(stage: str, cfg_path: Path, run: Path, at: str, nth: int, how: str, hits: Path, timeout: float = 900,
                  caller: str|None = None) -> dict|None:
    "Run `stage` with a write hook: SIGKILL at the `nth` call of `at` (made from function `caller`, if given; `how`: before / after / torn). The hit, or None."
    n0 = len(read_hits(hits))
    p = start(stage, cfg_path, run, {"at": at, "nth": nth, "how": how, "caller": caller}, hits)
    out, _ = p.communicate(timeout=timeout)
    h = read_hits(hits)
    if len(h) > n0:
        assert p.returncode == -signal.SIGKILL, out[-3000:]
        return h[-1]
    assert p.returncode == 0, f"stage process failed ({p.returncode}) without the fault:\n{out[-4000:]}"
    return None


def read_hits(hits: Path) -> list:
    return [json.loads(l) for l in hits.read_text().splitlines() if l.strip()] if hits.exists() else []


# ---------------------------------------------------------------------------------------------- invariants

# a pretraining checkpoint (sharded: each rank's tensors under state/, the small parts JSON; see 21_pretrain TrainState)
PRETRAIN_FILES = ["optimizer.json", "scheduler.json", "rng.json", "rng.safetensors", "loader.json", "trainer_state.json"]


def _safetensors_ok(f: Path) -> str|None:
    from safetensors import safe_open
    try:
        with safe_open(str(f), "pt") as h:
            for k in h.keys(): h.get_tensor(k)
    except Exception as e: return f"{f}: unreadable safetensors ({type(e).__name__}: {str(e)[:120]})"


def _json_ok(f: Path) -> str|None:
    try: json.loads(f.read_text())
    except Exception as e: return f"{f}: unreadable JSON ({type(e).__name__})"


def _model_folder(d: Path) -> list:
    "A Hugging Face model folder: marked complete, config and weights readable."
    from forge_nb.runs import is_complete
    if not is_complete(d): return [f"{d}: no COMPLETE marker under its final name"]
    probs = [p for f in [d/"config.json"] if (p := _json_ok(f))]
    ws = sorted(d.glob("*.safetensors"))
    if not ws: probs.append(f"{d}: no weights")
    return probs + [p for w in ws if (p := _safetensors_ok(w))]


def check_outputs(run: Path, killed: bool = False) -> list:
    """Every final/ and checkpoint folder under `run` complete and readable, the token store whole: a list of problems (empty: fine).
    `killed`: right after a kill, a Trainer checkpoint without its COMPLETE marker is allowed (transformers writes
    `checkpoint-N` in place; forge_nb never loads an unmarked one and removes it when training starts again)."""
    from forge_nb.runs import is_complete
    run, probs = Path(run), []
    data = run/"data"
    if data.exists() and not data.is_symlink():
        if not is_complete(data): probs.append(f"{data}: no COMPLETE marker under its final name")
        elif p := _json_ok(data/"manifest.json"): probs.append(p)
        else:
            m = json.loads((data/"manifest.json").read_text())
            for sh in m["train"]["shards"]:
                for k, v in sh.items():
                    if isinstance(v, str) and not (data/"train"/v).exists() and not (data/v).exists() and k in ("file", "tokens", "path"):
                        probs.append(f"{data}: shard {v} missing")
    for stage in ("pretrain", "sft", "rl"):
        sd = run/stage
        if not sd.exists(): continue
        for fin in [sd/"final", sd/"reward_model"]:
            if fin.exists(): probs += _model_folder(fin)
        ck = sd/"checkpoints"
        for d in sorted(ck.glob("step_*")) if ck.exists() else []:
            if not is_complete(d): probs.append(f"{d}: checkpoint without COMPLETE marker"); continue
            for f in PRETRAIN_FILES:
                if not (d/f).exists(): probs.append(f"{d}: {f} missing")
            shards = sorted((d/"state").glob("*.safetensors"))
            if not shards: probs.append(f"{d}: no tensor shards under state/")
            probs += [p for w in [*shards, d/"rng.safetensors"] if w.exists() and (p := _safetensors_ok(w))]
            probs += [p for f in PRETRAIN_FILES if f.endswith(".json") and (d/f).exists() and (p := _json_ok(d/f))]
        for d in sorted(ck.glob("checkpoint-*")) if ck.exists() else []:
            if not is_complete(d):
                if not killed: probs.append(f"{d}: Trainer checkpoint without COMPLETE marker")
                continue
            if not (d/"trainer_state.json").exists(): probs.append(f"{d}: trainer_state.json missing"); continue
            if p := _json_ok(d/"trainer_state.json"): probs.append(p)
            probs += [p for w in d.glob("*.safetensors") if (p := _safetensors_ok(w))]
    return probs


def leftovers(run: Path) -> list:
    "Hidden temporaries (`.name.tmp-*`, `.name.old-*`, `.name.del-*`) left by killed writers: harmless (never under a final name), counted."
    return [str(p) for p in Path(run).rglob(".*") if any(t in p.name for t in (".tmp-", ".old-", ".del-"))]


# ---------------------------------------------------------------------------------------------- comparison

VOLATILE = {"time", "tokens_per_s", "mem_gb", "mfu", "train_runtime", "train_samples_per_second", "train_steps_per_second",
            "step_time", "samples"}


def _strip(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in VOLATILE and not k.endswith("_per_second") and not k.startswith("timing/")}


def metrics_records(run: Path, stage: str) -> list:
    "A stage's metrics without events (a preemption's record) and without timing fields."
    from forge_nb.runs import read_metrics
    return [_strip(r) for r in read_metrics(Path(run)/stage/"metrics.jsonl") if "event" not in r]


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")): out.update(load_file(str(f)))
    return out


def max_diff(a: dict, b: dict) -> float:
    "Largest |a - b| over every tensor (inf when names or shapes differ)."
    if a.keys() != b.keys(): return float("inf")
    m = 0.0
    for k in a:
        if a[k].shape != b[k].shape: return float("inf")
        if a[k].numel(): m = max(m, float((a[k].double() - b[k].double()).abs().max()))
    return m


def metrics_diff(ra: list, rb: list) -> float:
    "Largest |difference| over the numbers of two record lists (inf when their steps or keys differ)."
    if [(r.get("step"), sorted(r)) for r in ra] != [(r.get("step"), sorted(r)) for r in rb]: return float("inf")
    m = 0.0
    for x, y in zip(ra, rb):
        for k in x:
            if isinstance(x[k], (int, float)) and isinstance(y[k], (int, float)) and x[k] is not None:
                m = max(m, abs(float(x[k]) - float(y[k])))
            elif x[k] != y[k]: return float("inf")
    return m


def compare_stage(ref: Path, run: Path, stage: str) -> dict:
    "How a finished run differs from the undisturbed one: metrics and final weights (max |diff|; 0.0 is bitwise)."
    out = {"metrics": metrics_diff(metrics_records(ref, stage), metrics_records(run, stage)),
           "n_records": len(metrics_records(run, stage))}
    fin = "final" if (Path(ref)/stage/"final").exists() else "reward_model"
    out["weights"] = max_diff(weights(Path(ref)/stage/fin), weights(Path(run)/stage/fin))
    return out


DATA_VOLATILE = {"created", "build_seconds", "inputs"}


def compare_data(ref: Path, run: Path) -> dict:
    "The token store against an undisturbed build: every file byte for byte (manifest: without its time fields)."
    a, b = Path(ref)/"data", Path(run)/"data"
    fa = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file() and p.name != "COMPLETE")
    fb = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file() and p.name != "COMPLETE")
    differ = [] if fa == fb else [f"file lists differ: {sorted(set(fa) ^ set(fb))}"]
    for f in fa if fa == fb else []:
        if f == "manifest.json":
            ma, mb = (json.loads((x/f).read_text()) for x in (a, b))
            if {k: v for k, v in ma.items() if k not in DATA_VOLATILE} != {k: v for k, v in mb.items() if k not in DATA_VOLATILE}:
                differ.append(f)
        elif (a/f).read_bytes() != (b/f).read_bytes(): differ.append(f)
    return {"files": len(fa), "differ": differ}


# ---------------------------------------------------------------------------------------------- counting

class FaultLog:
    "Every injected fault and every comparison, counted per stage and written to a JSON artifact."
    def __init__(self, path: Path):
        self.path = Path(path); self.faults, self.compared = [], []

    def fault(self, stage: str, kind: str, **detail):
        self.faults.append({"stage": stage, "kind": kind, **detail}); self.write()

    def compare(self, stage: str, result: dict, **detail):
        self.compared.append({"stage": stage, **result, **detail}); self.write()

    def counts(self) -> dict:
        out = {}
        for f in self.faults:
            s = out.setdefault(f["stage"], {"total": 0})
            s["total"] += 1; s[f["kind"]] = s.get(f["kind"], 0) + 1
        return out

    def write(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"counts": self.counts(), "total": len(self.faults), "runs_compared": len(self.compared),
                                         "faults": self.faults, "compared": self.compared}, indent=1, default=str))

    def summary(self) -> str:
        c = self.counts()
        return (f"faults injected: {len(self.faults)} (" + ", ".join(f"{s} {v['total']}" for s, v in c.items()) + f"); "
                f"runs compared: {len(self.compared)}; artifact: {self.path}")
