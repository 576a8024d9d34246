"""Memory and time of one pretraining checkpoint save: the previous rank-0 gather (full model and optimizer state
gathered to rank 0, which writes `model.safetensors` + `optimizer.pt`) against the sharded save (each rank writes its
own safetensors shard with torch.distributed.checkpoint), on 1 and 2 ranks (FSDP2 on 2), blocking and in the
background. Every case runs in fresh processes (gloo, CPU); a thread samples each rank's resident memory every 5 ms.

    .venv/bin/python bench/bench_checkpoint.py                      # depth 16 x 64 = hidden 1024, vocab 32768: ~235M params
    .venv/bin/python bench/bench_checkpoint.py --depth 8 --repeats 1
    .venv/bin/python bench/bench_checkpoint.py --depth 21       # 499M: the largest whose every case fits in 24 GiB shared

Before each case the memory it is expected to need (bytes per parameter, from the 236M measurements) is compared with
MemAvailable; a case that would leave less than `--reserve-gib` (default 5 GiB) free is skipped with a line saying so
(the machine is shared). After a blocking save, the same processes load it back (`load s`, `load peak`): the sharded
checkpoint with `TrainState.load`, the gathered one the way forge_nb did before (every rank reads the full files).

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
    def load_state_dict(self, d): pass


def gather_load(state, path: Path):
    "The previous TrainState.load: every rank reads the full model and optimizer files and keeps its part."
    import torch
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict, StateDictOptions
    from forge_nb.pretrain import load_weights
    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(state.model, load_weights(path/"model.safetensors"), options=opts)
    set_optimizer_state_dict(state.model, state.optimizer, torch.load(path/"optimizer.pt", weights_only=True), options=opts)


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
    opt.step(); opt.zero_grad(set_to_none=True)          # as the training loop leaves it before a save
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
    if args.mode != "async":                         # load it back into the same (live) state, as a resume does
        _barrier(); t1 = time.perf_counter()
        with PeakRSS() as m2:
            gather_load(st, Path(args.out)) if args.mode == "gather" else st.load(Path(args.out))
            _barrier()
        rec.update(load_s=time.perf_counter() - t1, load_peak_gb=m2.peak)
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
    nan = float("nan")
    return dict(params=recs[0]["params"], blocked_s=max(r["blocked_s"] for r in recs), total_s=max(r["total_s"] for r in recs),
                peak_gb=max(r["peak_gb"] for r in recs), over_gb=max(r["peak_gb"] - r["before_gb"] for r in recs),
                sum_gb=sum(r["peak_gb"] for r in recs), size_gb=size / 1e9,
                load_s=max(r.get("load_s", nan) for r in recs), load_peak_gb=max(r.get("load_peak_gb", nan) for r in recs))


# Peak resident memory of a case (save or load), summed over its ranks, in bytes per parameter, plus ~1 GB of torch per
# process: measured at 499M (fp32 weights + the default Muon/AdamW state = 9.5 before a save on one rank; one rank: gather
# load 13.7, sharded 10.4, background 18.7; two ranks, sum: sharded 16.3, background 27.0, gather 22.9 and its load, every
# rank reading the full files, ~2 × 9.2), rounded up. Used only to skip a case the machine cannot hold.
BYTES_PER_PARAM = {("gather", 1): 15, ("sharded", 1): 12, ("async", 1): 20, ("gather", 2): 28, ("sharded", 2): 15, ("async", 2): 26}


def mem_available_gib() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"): return int(line.split()[1]) / 2**20
    return float("inf")


def estimated_params(args) -> int:
    from forge_nb.config import ModelConfig
    from forge_nb.model import count_params
    return count_params(ModelConfig(depth=args.depth, aspect_ratio=args.aspect, head_dim=64, max_seq_len=64), args.vocab)["total"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depth", type=int, default=16); ap.add_argument("--aspect", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=32768); ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--cases", default="gather:1,sharded:1,async:1,gather:2,sharded:2,async:2",
                    help="comma-separated mode:ranks (modes gather, sharded, async)")
    ap.add_argument("--reserve-gib", type=float, default=5.0, help="skip a case whose estimated peak would leave less free")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS); ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS); ap.add_argument("--report", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker: return worker(args)
    cases = [(m, int(r)) for m, r in (c.split(":") for c in args.cases.split(","))]
    n_est = estimated_params(args)
    rows, loads = {c: [] for c in cases}, []
    print(f"{n_est / 1e6:.0f}M parameters; load average at start {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        for _ in range(args.repeats):
            for c in cases:
                need, avail = (BYTES_PER_PARAM[c] * n_est + c[1] * 1e9) / 2**30, mem_available_gib()
                if avail - need < args.reserve_gib:
                    print(f"  {c}: skipped: needs ~{need:.1f} GiB, {avail:.1f} GiB available, {args.reserve_gib} GiB to stay free", flush=True)
                    continue
                rows[c].append(run_case(*c, args, Path(d))); loads.append(os.getloadavg()[0])
                print(f"  {c}: {rows[c][-1]} (estimated {need:.1f} GiB, {avail:.1f} available; load {loads[-1]:.1f})", flush=True)
    med = {c: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for c, rs in rows.items() if rs}
    n = next(iter(med.values()))["params"] if med else n_est
    print(f"\ncheckpoint save, {n / 1e6:.0f}M parameters (depth {args.depth}, hidden {args.depth * args.aspect}, vocab {args.vocab}), "
          f"fp32 model + optimizer state (default optim), no gradients; median of {args.repeats}; "
          f"load average during the cases {min(loads, default=0):.1f}-{max(loads, default=0):.1f}")
    head = ("| save | ranks | blocked s | total s | peak RSS GB (busiest rank) | + over state GB | sum of ranks GB | on disk GB | "
            "load s | load peak RSS GB | blocked vs gather | peak vs gather |")
    print(head); print("|---" * (head.count("|") - 1) + "|")
    names = {"gather": "rank-0 gather (before)", "sharded": "sharded (DCP), blocking", "async": "sharded (DCP), background"}
    for c in cases:
        if c not in med: print(f"| {names[c[0]]} | {c[1]} | skipped (memory) |"); continue
        m, g = med[c], med.get(("gather", c[1]))
        ratio = (lambda k: f"{m[k] / g[k]:.2f}") if g else (lambda k: "-")
        print(f"| {names[c[0]]} | {c[1]} | {m['blocked_s']:.2f} | {m['total_s']:.2f} | {m['peak_gb']:.2f} | {m['over_gb']:.2f} | "
              f"{m['sum_gb']:.2f} | {m['size_gb']:.2f} | {m['load_s']:.2f} | {m['load_peak_gb']:.2f} | {ratio('blocked_s')} | {ratio('peak_gb')} |")
    if args.json: Path(args.json).write_text(json.dumps({f"{a}-{b}": v for (a, b), v in med.items()}, indent=1))


if __name__ == "__main__":
    main()
