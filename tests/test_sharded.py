"""Sharded checkpoints (torch.distributed.checkpoint) and validation split across ranks.

- nothing is unpickled when a checkpoint loads;
- a SIGKILL while a background save is being written leaves the previous checkpoint in use, and the resumed run
  trains exactly as the killed one did;
- a run checkpointed on N ranks resumes on M (2 -> 1 and 1 -> 2, FSDP2 shards and plain tensors), finishing equal to an
  uninterrupted run, every training row read exactly once (recounted from hashes each rank recorded of what it trained on);
  also when the checkpoint lies in a later epoch (2 -> 1 in epoch 1, a global batch straddling the end of epoch 0);
- 2-rank validation equals one process's.
The same resharding on the local SLURM cluster is in `test_reshard_on_slurm` (marker `slurm`).
"""
import collections, json, os, signal, socket, subprocess, sys, time
from pathlib import Path

import pytest

from forge_nb.runs import save_config
from forge_nb.runs import RunDir, read_metrics
from forge_nb.demo import tiny_config

ROOT = Path(__file__).resolve().parent
DRIVER = "import sys; sys.path.insert(0, sys.argv[1]); import sharded_probes as p; p.{fn}(*sys.argv[2:])"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    from forge_nb.data.store import run_data_stage
    d = tmp_path_factory.mktemp("store")
    run_data_stage(tiny_config(d), d/"t", log=lambda *a: None)
    return d/"t"/"data"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, store_dir):
    "10 uninterrupted steps on one process (micro-batch 2 x accumulation 2): (losses, {step: rows trained on})."
    tmp = tmp_path_factory.mktemp("reference")
    run = _run_dir(tmp, "ref", store_dir)
    _finish(_pretrain(_cfg(tmp, steps=10, grad_accum=2, parallel="none"), run, tmp/"rec-ref"))
    return _losses(run), _rows(tmp/"rec-ref")


def _cfg(tmp: Path, **pc):
    "The tiny pipeline with a constant learning rate after warmup (so a 6-step run continued to 10 = a 10-step run)."
    return tiny_config(tmp, **{"micro_batch_size": 2, "eval_every": 100, "eval_batches": 1, "save_every": 3, "keep_last": 2,
                               "optim": {"lr": 3e-3, "warmup_steps": 2, "schedule": "constant"}, **pc})


def _run_dir(tmp: Path, name: str, store_dir: Path) -> Path:
    run = tmp/name
    if not run.exists():
        run.mkdir(parents=True); (run/"data").symlink_to(store_dir, target_is_directory=True)
    return run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _start(fn: str, args: list, ranks: int = 1) -> list:
    "`sharded_probes.fn(*args)` in `ranks` fresh processes (gloo rendezvous through RANK/WORLD_SIZE/MASTER_*), like a job's tasks."
    port, procs = str(_free_port()), []
    for r in range(ranks):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        if ranks > 1: env.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(ranks), LOCAL_WORLD_SIZE=str(ranks),
                                 MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "-c", DRIVER.format(fn=fn), str(ROOT), *map(str, args)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def _finish(procs: list, timeout: float = 300):
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"process failed ({p.returncode}):\n{out[-4000:]}"


def _pretrain(cfg, run: Path, rec: Path, ranks: int = 1, slow_save_s: float = 0.0) -> list:
    save_config(cfg, run/f"cfg-{cfg.pretrain.steps}.yaml")
    return _start("pretrain_recorded", [run/f"cfg-{cfg.pretrain.steps}.yaml", run, rec, slow_save_s], ranks)


def _losses(run: Path) -> list:
    return [(r["step"], r["loss"]) for r in read_metrics(RunDir(run).stage("pretrain").metrics_path) if "loss" in r]


def _rows(*rec_dirs: Path) -> dict:
    "{step: sorted row hashes trained on at that step, over every rank} from the recorded batches of the given runs."
    by_step = collections.defaultdict(list)
    for d in rec_dirs:
        for f in sorted(d.glob("batches-*.jsonl")):
            for line in f.read_text().splitlines():
                r = json.loads(line); by_step[r["step"]] += r["rows"]
    return {s: sorted(v) for s, v in sorted(by_step.items())}


def test_checkpoint_loads_without_unpickling(tmp_path, store_dir, monkeypatch):
    "Every unpickler (pickle.load(s), torch.load, Unpickler) raises: a checkpoint still loads, bitwise."
    import pickle, torch
    from forge_nb.data.store import TokenStore
    from forge_nb.pretrain import build_state, make_runtime
    cfg, store = _cfg(tmp_path), TokenStore(store_dir)
    rt = make_runtime(cfg.pretrain)
    s = build_state(cfg, store, rt)
    s.save(tmp_path/"ck").wait()
    files = sorted(str(p.relative_to(tmp_path/"ck")) for p in (tmp_path/"ck").rglob("*") if p.is_file())
    assert all(f.endswith((".json", ".safetensors")) or f == "COMPLETE" for f in files), files
    def refuse(*a, **k): raise AssertionError("something was unpickled")
    for mod, name in [(pickle, "load"), (pickle, "loads"), (torch, "load"), (pickle, "Unpickler")]:
        monkeypatch.setattr(mod, name, refuse)
    with torch.no_grad():
        for p in s.model.parameters(): p.zero_()
    s2 = build_state(cfg, store, rt).load(tmp_path/"ck")
    monkeypatch.undo()
    ref = build_state(cfg, store, rt)
    assert all(torch.equal(a, b) for a, b in zip(ref.model.state_dict().values(), s2.model.state_dict().values()))


def test_sigkill_during_background_save_keeps_previous_checkpoint(tmp_path, store_dir):
    """The save at step 8 is made slow (its writer thread sleeps); training goes on meanwhile (the save is in the
    background) and the process is killed with SIGKILL while that save is still being written. The hidden folder is
    ignored: the run resumes from step 4, and its losses for steps 5.. equal those the killed run logged."""
    cfg = _cfg(tmp_path, steps=14, save_every=4, keep_last=3)
    run = _run_dir(tmp_path, "killed", store_dir)
    stage = RunDir(run).stage("pretrain")
    [p] = _pretrain(cfg, run, tmp_path/"rec1", slow_save_s=120)
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < 240:
        tmp = list(stage.checkpoints.glob(".step_00000008.tmp-*")) if stage.checkpoints.exists() else []
        if tmp and _losses(run) and max(s for s, _ in _losses(run)) >= 11: break
        time.sleep(0.05)
    assert p.poll() is None, f"the run ended before the kill:\n{p.communicate()[0][-3000:]}"
    os.kill(p.pid, signal.SIGKILL); p.wait()
    assert [c.name for c in stage.complete_checkpoints()] == ["step_00000004"]
    assert list(stage.checkpoints.glob(".step_00000008.tmp-*/state")), "the killed save left no hidden folder"
    before = dict(_losses(run))
    assert max(before) >= 11, "training should go on while the save is written"
    _finish(_pretrain(cfg, run, tmp_path/"rec2"))
    after = dict(_losses(run))
    summary = json.loads((stage.root/"summary.json").read_text())
    assert summary["resumed_from"] == 4 and sorted(after) == list(range(1, 15))
    assert [after[s] for s in range(5, 12)] == [before[s] for s in range(5, 12)], "the resumed run trains differently"
    assert not list(stage.checkpoints.glob(".step_*.tmp-*")), "the stale hidden folder was not removed"
    print(f"killed with step 8's save in flight at step {max(before)}; resumed from 4; steps 5-11 bitwise equal")


@pytest.fixture(scope="module")
def small_store_dir(tmp_path_factory):
    "A store of about a hundred sequences, not a multiple of the global batch (4): a run of 30 steps reads past its end."
    from forge_nb.config import override
    from forge_nb.data.store import run_data_stage
    d = tmp_path_factory.mktemp("small-store")
    run_data_stage(override(tiny_config(d), "data.total_tokens=5000"), d/"t", log=lambda *a: None)
    return d/"t"/"data"


def test_reshard_resume_in_a_later_epoch(tmp_path, small_store_dir):
    """2 FSDP ranks checkpointed in epoch 1 (step 26), continued to 30 on one process, against 30 uninterrupted steps on one:
    the loader's epochs are laid end to end, so the rows of every step, the one that straddles the end of epoch 0
    included, are the uninterrupted run's, and the losses equal."""
    from forge_nb.config import override
    from forge_nb.data.store import TokenStore
    N = TokenStore(small_store_dir).num_sequences()
    assert N % 4 and N < 26 * 4 < 2 * N, N
    cfg = lambda steps, ranks, par: override(_cfg(tmp_path, steps=steps, grad_accum=2 // ranks, parallel=par, save_every=26),
                                             "data.total_tokens=5000")
    ref = _run_dir(tmp_path, "ref", small_store_dir)
    _finish(_pretrain(cfg(30, 1, "none"), ref, tmp_path/"rec-ref"))
    run = _run_dir(tmp_path, "resharded", small_store_dir)
    _finish(_pretrain(cfg(26, 2, "fsdp"), run, tmp_path/"rec-a", ranks=2))
    _finish(_pretrain(cfg(30, 1, "none"), run, tmp_path/"rec-b"))
    stage = RunDir(run).stage("pretrain")
    saved = json.loads((stage.checkpoint_path(26)/"loader.json").read_text())
    assert [d["world_size"] for d in saved] == [2, 2] and saved[0]["sequences_consumed"] == 26 * 4 > N   # in epoch 1
    assert json.loads((stage.root/"summary.json").read_text())["resumed_from"] == 26
    want, got = _rows(tmp_path/"rec-ref"), _rows(tmp_path/"rec-a", tmp_path/"rec-b")
    assert sorted(got) == list(range(1, 31)) and got == want, "rows skipped or read twice after resharding in epoch 1"
    a, b = _losses(ref), _losses(run)
    assert [s for s, _ in b] == list(range(1, 31))
    diffs = [abs(x - y) for (_, x), (_, y) in zip(a, b)]
    print(f"N = {N}; 2 ranks -> 1 in epoch 1: every step's rows equal; |loss - uninterrupted| by step "
          + " ".join(f"{d:.1e}" for d in diffs))
    # the same rows, so only summation order differs (FSDP's reduce-scatter against one process): it drifts with the steps
    assert max(diffs) < 1e-3 * a[0][1], list(zip(a, b))


@pytest.mark.parametrize("before,after", [((2, "fsdp"), (1, "none")), ((1, "none"), (2, "fsdp"))])
def test_reshard_resume(tmp_path, store_dir, reference, before, after):
    """6 steps on N ranks (checkpoint at 6), continued to 10 on M ranks, against 10 uninterrupted steps on 1:
    equal losses, and each step's training rows (recorded by the ranks) equal the uninterrupted run's: none skipped,
    none read twice. Global batch 4 sequences: N ranks x micro-batch 2 x accumulation 2/N."""
    cfg = lambda steps, ranks, par: _cfg(tmp_path, steps=steps, grad_accum=2 // ranks, parallel=par, keep_last=4)
    run = _run_dir(tmp_path, "resharded", store_dir)
    _finish(_pretrain(cfg(6, before[0], before[1]), run, tmp_path/"rec-a", ranks=before[0]))
    _finish(_pretrain(cfg(10, after[0], after[1]), run, tmp_path/"rec-b", ranks=after[0]))
    stage = RunDir(run).stage("pretrain")
    state = json.loads((stage.checkpoint_path(6)/"trainer_state.json").read_text())
    shards = sorted(p.name for p in (stage.checkpoint_path(6)/"state").iterdir())
    assert state["world_size"] == before[0] and len(shards) == before[0], shards   # each rank wrote its own shard
    assert json.loads((stage.root/"summary.json").read_text())["resumed_from"] == 6
    (a, want), b = reference, _losses(run)
    assert [s for s, _ in b] == list(range(1, 11))
    diff = max(abs(x - y) for (_, x), (_, y) in zip(a, b))
    assert diff < 1e-4 * a[0][1], list(zip(a, b))
    got = _rows(tmp_path/"rec-a", tmp_path/"rec-b")
    assert sorted(got) == list(range(1, 11)) and got == want, "rows skipped or read twice after resharding"
    every = [h for v in got.values() for h in v]
    assert len(every) == 40 and len(set(every)) == len(set(h for v in want.values() for h in v))
    print(f"{before} -> {after}: max |loss - uninterrupted| {diff:.2e}; 40 rows per run, the same rows at every step")


def test_two_rank_validation_equals_one_process(tmp_path, store_dir):
    "FSDP on 2 ranks, each scoring its share of an odd number of batches, all-reduced = one process's bits per byte."
    from forge_nb.data.store import TokenStore
    from forge_nb.pretrain import build_state, evaluate, make_runtime
    run = _run_dir(tmp_path, "val", store_dir)
    cfg = _cfg(tmp_path); save_config(cfg, run/"cfg.yaml")
    two = _start("validate", [run/"cfg.yaml", run, tmp_path/"two.json", "fsdp"], ranks=2)
    st, rt = TokenStore(store_dir), make_runtime(cfg.pretrain)
    a = evaluate(build_state(cfg, st, rt).model, st, rt, 3)          # this process, the same seeded model
    _finish(two)
    b = json.loads((tmp_path/"two.json").read_text())
    assert sorted(a) == sorted(b) and any(k.endswith("/bpb") for k in a)
    for k in a: assert abs(a[k] - b[k]) <= 1e-5 * abs(a[k]), (k, a[k], b[k])
    assert any(-(-st.num_sequences(s) // 3) % 2 for s in st.val_sources), "no source has an odd batch count: the padding forward is untested"
    print({k: (round(a[k], 6), round(b[k], 6)) for k in a if k.endswith("bpb")})


@pytest.mark.slurm
def test_reshard_on_slurm(slurm_cluster, tmp_path, store_dir, reference):
    """The same on the local SLURM cluster, through the launcher: DDP on 2 nodes -> 1 task, and 1 task -> DDP on 2 nodes;
    both chains run at once, against the same uninterrupted reference."""
    import sharded_probes
    from forge_nb import launch as L
    from forge_nb.config import ResourcesConfig
    def submit(name, steps, nodes, after=None):
        run = _run_dir(tmp_path, name, store_dir)
        cfg = _cfg(tmp_path, steps=steps, grad_accum=2 // nodes, parallel="ddp" if nodes > 1 else "none", keep_last=4)
        save_config(cfg, run/f"cfg-{steps}.yaml")
        res = ResourcesConfig(cluster="slurm", partition="cpu", nodes=nodes, tasks_per_node=1, time_min=10,
                              env={"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
        return L.submit(sharded_probes.pretrain_recorded, str(run/f"cfg-{steps}.yaml"), str(run), str(tmp_path/f"rec-{name}-{steps}"),
                        resources=res, run_dir=tmp_path/"jobs"/f"{name}-{steps}", name="reshard", depends_on=[after] if after else None)
    chains = {name: submit(name, 6, a) for name, a, _ in [("2to1", 2, 1), ("1to2", 1, 2)]}
    chains = {name: (first, submit(name, 10, b, after=first)) for (name, first), b in zip(chains.items(), [1, 2])}
    a, want = reference
    for name, (first, second) in chains.items():
        first.result(timeout_s=600); second.result(timeout_s=600)
        run = tmp_path/name
        stage = RunDir(run).stage("pretrain")
        assert json.loads((stage.checkpoint_path(6)/"trainer_state.json").read_text())["world_size"] == (2 if name == "2to1" else 1)
        assert json.loads((stage.root/"summary.json").read_text())["resumed_from"] == 6
        b = _losses(run)
        assert [s for s, _ in b] == list(range(1, 11))
        diff = max(abs(x - y) for (_, x), (_, y) in zip(a, b))
        assert diff < 1e-4 * a[0][1], (name, list(zip(a, b)))
        got = _rows(tmp_path/f"rec-{name}-6", tmp_path/f"rec-{name}-10")
        assert got == want, f"{name}: rows skipped or read twice"
        print(f"SLURM {name}: max |loss - uninterrupted| {diff:.2e}; every step's rows as uninterrupted")
