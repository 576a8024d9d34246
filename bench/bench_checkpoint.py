"""Memory and time of one pretraining checkpoint save: the previous rank-0 gather (full model and optimizer state
gathered to rank 0, which writes `model.safetensors` + `optimizer.pt`) against the sharded save (each rank writes its
own safetensors shard with torch.distributed.checkpoint), on 1 and 2 ranks (FSDP2 on 2), blocking and in the
background. Every case runs in fresh processes (gloo, CPU); a thread samples each rank's resident memory every 5 ms.

    .venv/bin/python bench/bench_checkpoint.py                      # depth 16 x 64 = hidden 1024, vocab 32768: ~235M params
    .venv/bin/python bench/bench_checkpoint.py --depth 8 --repeats 1

Columns: `blocked s` = time training waits (for a background save: until the state is copied to CPU memory);
`total s` = until the checkpoint is complete on disk; `peak RSS` = the highest resident memory of the busiest rank
during the save and `+ over state` = how far that is above the rank's memory just before the save (model, gradients
and optimizer state already resident); `sum` = the peaks of all ranks added. Ratios are against the rank-0 gather
with the same number of ranks. Model + AdamW state in fp32 = 12 bytes per parameter (+4 for gradients).
"""
import argparse, json, os, socket, statistics, subprocess, sys, tempfile, threading, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_gb() -> float:
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


class PeakRSS:
    "Highest resident memory of this process while the block runs (sampled every 5 ms)."
    def __enter__(self):
        self.peak, self.stop = rss_gb(), False
        def run():
            while not self.stop: self.peak = max(self.peak, rss_gb()); time.sleep(0.005)
        self.t = threading.Thread(target=run, daemon=True); self.t.start(); return self
    def __exit__(self, *a):
        self.stop = True; self.t.join(); self.peak = max(self.peak, rss_gb())


def gather_save(state, path: Path):
    "The previous TrainState.save (forge_nb before sharded checkpoints): everything gathered to rank 0, which writes it."
    import torch
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, StateDictOptions
    from forge_nb.pretrain import full_model_state, save_weights, _dist_on
    from forge_nb.runs import atomic_dir
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd, osd = full_model_state(state.model), get_optimizer_state_dict(state.model, state.optimizer, options=opts)
    if not _dist_on() or torch.distributed.get_rank() == 0:
        with atomic_dir(path) as tmp:
            save_weights(msd, tmp/"model.safetensors"); torch.save(osd, tmp/"optimizer.pt")
    if _dist_on(): torch.distributed.barrier()


class _Loader:
    def state_dict(self): return {"step": 0}


def worker(args):
    "One rank: build the model (FSDP2 on 2 ranks), give AdamW its state, then time and measure one save."
    import torch
    from forge_nb.config import ModelConfig, OptimConfig
    from forge_nb.distributed import init_distributed, shutdown_distributed
    from forge_nb.model import build_model
    from forge_nb.pretrain import TrainState, make_optimizer, make_scheduler, parallelize, _barrier
    torch.set_num_threads(1)
    env = init_distributed(backend="gloo")
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=args.depth, aspect_ratio=args.aspect, head_dim=64, max_seq_len=64), args.vocab)
    model = parallelize(model, "fsdp" if env.distributed else "none", env, torch.device("cpu"))
    opt = make_optimizer(model, OptimConfig())
    model(input_ids=torch.randint(0, args.vocab, (1, 8)), use_cache=False).logits.float().mean().backward()
    opt.step()
    n = sum(p.numel() for p in model.parameters())     # FSDP2 DTensors count their global size
    st = TrainState(model, opt, make_scheduler(opt, OptimConfig(), 10), _Loader(), step=1)
    group = torch.distributed.new_group(backend="gloo") if env.distributed else None
    _barrier()
    before = rss_gb()
    t0 = time.perf_counter()
    with PeakRSS() as m:
        if args.mode == "gather": gather_save(st, Path(args.out)); blocked = time.perf_counter() - t0
        else:
            p = st.save(Path(args.out), blocking=args.mode == "sharded", group=group)
            blocked = time.perf_counter() - t0
            p.wait()
        _barrier()
    total = time.perf_counter() - t0
    rec = dict(rank=env.rank, params=n, before_gb=before, peak_gb=m.peak, blocked_s=blocked, total_s=total)
    Path(args.report + f".{env.rank}").write_text(json.dumps(rec))
    shutdown_distributed()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def run_case(mode: str, ranks: int, args, d: Path) -> dict:
    out, rep, port = d/f"ck-{mode}-{ranks}", d/f"rep-{mode}-{ranks}", str(free_port())
    procs = []
    for r in range(ranks):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        if ranks > 1: env.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(ranks), LOCAL_WORLD_SIZE=str(ranks),
                                 MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", "--mode", mode, "--out", str(out), "--report", str(rep),
                                       "--depth", str(args.depth), "--aspect", str(args.aspect), "--vocab", str(args.vocab)], env=env))
    for p in procs:
        if p.wait() != 0: raise SystemExit(f"{mode} on {ranks} rank(s) failed")
    recs = [json.loads(Path(f"{rep}.{r}").read_text()) for r in range(ranks)]
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    import shutil; shutil.rmtree(out)
    return dict(params=recs[0]["params"], blocked_s=max(r["blocked_s"] for r in recs), total_s=max(r["total_s"] for r in recs),
                peak_gb=max(r["peak_gb"] for r in recs), over_gb=max(r["peak_gb"] - r["before_gb"] for r in recs),
                sum_gb=sum(r["peak_gb"] for r in recs), size_gb=size / 1e9)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depth", type=int, default=16); ap.add_argument("--aspect", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=32768); ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS); ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS); ap.add_argument("--report", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker: return worker(args)
    cases = [("gather", 1), ("sharded", 1), ("async", 1), ("gather", 2), ("sharded", 2), ("async", 2)]
    rows = {c: [] for c in cases}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        for _ in range(args.repeats):
            for c in cases: rows[c].append(run_case(*c, args, Path(d))); print(f"  {c}: {rows[c][-1]}", flush=True)
    med = {c: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for c, rs in rows.items()}
    n = med[cases[0]]["params"]
    print(f"\ncheckpoint save, {n / 1e6:.0f}M parameters (depth {args.depth}, hidden {args.depth * args.aspect}, vocab {args.vocab}), "
          f"fp32 model + AdamW; median of {args.repeats}; load average {os.getloadavg()[0]:.1f}")
    head = "| save | ranks | blocked s | total s | peak RSS GB (busiest rank) | + over state GB | sum of ranks GB | on disk GB | blocked vs gather | peak vs gather |"
    print(head); print("|---" * (head.count("|") - 1) + "|")
    names = {"gather": "rank-0 gather (before)", "sharded": "sharded (DCP), blocking", "async": "sharded (DCP), background"}
    for c in cases:
        m, g = med[c], med[("gather", c[1])]
        print(f"| {names[c[0]]} | {c[1]} | {m['blocked_s']:.2f} | {m['total_s']:.2f} | {m['peak_gb']:.2f} | {m['over_gb']:.2f} | "
              f"{m['sum_gb']:.2f} | {m['size_gb']:.2f} | {m['blocked_s'] / g['blocked_s']:.2f} | {m['peak_gb'] / g['peak_gb']:.2f} |")
    if args.json: Path(args.json).write_text(json.dumps({f"{a}-{b}": v for (a, b), v in med.items()}, indent=1))


if __name__ == "__main__":
    main()
