"""Small functions that launcher tests run INSIDE jobs (local and SLURM): what the job sees, a gloo all-reduce and DDP
steps, and a resumable computation that checkpoints to the run directory every step. They are pickled by value
(`cloudpickle.register_pickle_by_value`) so a job process needs only forge_nb, not this test folder."""
import hashlib, json, os, socket, sys, time
from pathlib import Path

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def env_probe(secret_name: str = "HF_TOKEN") -> dict:
    "What the job sees: SLURM's GPU variables (on the dev cluster, of /dev/null-like fake GPUs), the torch variables the launcher exported, a secret's hash (never its value)."
    keys = ["SLURM_JOB_ID", "SLURM_JOB_PARTITION", "SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES",
            "SLURM_GPUS_PER_NODE", "SLURM_TRES_PER_NODE", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"]
    out = {k: os.environ.get(k) for k in keys}
    val = os.environ.get(secret_name)
    out["secret_sha"] = hashlib.sha256(val.encode()).hexdigest() if val else None
    out["host"] = socket.gethostname()
    print(f"env_probe: secret {secret_name} present={val is not None}", flush=True)
    return out


def echo_secrets(names: list) -> list:
    "A stage that logs what it should not: the values of secret-looking variables, by print, on stderr and through logging."
    import logging
    lg = logging.getLogger("echo_secrets"); lg.addHandler(logging.StreamHandler()); lg.propagate = False
    for n in names:
        print(f"echo_secrets: print {n}={os.environ.get(n)}", flush=True)
        sys.stderr.write(f"echo_secrets: stderr {n}={os.environ.get(n)}\n"); sys.stderr.flush()
        lg.warning(f"echo_secrets: logging {n}={os.environ.get(n)}")
    return [f"{n}={os.environ.get(n)}" for n in names]   # the result too: submitit pickles it, forge_nb writes it as JSON


def echo_prompt(cfg) -> str:
    "A stage log line echoing a config value (SFT's first eval prompt, where a user put a token): prints it, returns the hash of what the job got."
    p = cfg.sft.eval_prompts[0]
    print(f"echo_prompt: {p}", flush=True)
    return hashlib.sha256(p.encode()).hexdigest()


def ddp_probe(steps: int = 5) -> dict:
    "A gloo all-reduce, then `steps` DDP steps of a tiny model; returns every rank's parameters (gathered)."
    import torch, torch.distributed as dist
    from forge_nb.distributed import init_distributed, shutdown_distributed
    env = init_distributed(backend="gloo", timeout_s=120)
    t = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(t)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1000 + env.rank)           # every rank its own data
    for _ in range(steps):
        x = torch.randn(16, 8, generator=g); y = x.sum(1, keepdim=True)
        loss = ((ddp(x) - y) ** 2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(env.world_size)]
    dist.all_gather(gathered, flat)
    hosts = [None] * env.world_size
    dist.all_gather_object(hosts, socket.gethostname() + ":" + os.environ.get("SLURMD_NODENAME", ""))
    dist.barrier()              # nobody tears the group down while a peer still talks (gloo aborts the process otherwise)
    shutdown_distributed()
    return dict(rank=env.rank, world_size=env.world_size, allreduce=float(t.item()), hosts=hosts,
                params=[g.tolist() for g in gathered], master=f"{env.master_addr}:{env.master_port}")


def count_steps(state_dir: str, n_steps: int, sleep_s: float = 0.0) -> dict:
    "A resumable computation: one step per `sleep_s`, state saved atomically every step, resumed from it on restart."
    from forge_nb.runs import atomic_write_json
    d = Path(state_dir); d.mkdir(parents=True, exist_ok=True)
    state_path = d / "state.json"
    st = json.loads(state_path.read_text()) if state_path.exists() else {"step": 0, "x": 1}
    with open(d / "starts.log", "a") as f: f.write(f"{st['step']}\n")
    print(f"count_steps: starting at step {st['step']}", flush=True)
    while st["step"] < n_steps:
        st["x"] = (st["x"] * 6364136223846793005 + st["step"] + 1) % (2 ** 61 - 1)
        st["step"] += 1
        atomic_write_json(state_path, st)
        time.sleep(sleep_s)
    starts = [int(l) for l in (d / "starts.log").read_text().split()]
    return {"x": st["x"], "steps": st["step"], "starts": starts}


def fail_probe(message: str = "bad batch"):
    "A stage that fails."
    raise ValueError(message)


def sleep_probe(seconds: float) -> float:
    "A stage that takes a while (to be cancelled)."
    time.sleep(seconds)
    return seconds


def write_marker(path: str, value: str) -> str:
    "A stage that leaves a file, to show it ran (and when)."
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(f"{value} {time.time()}\n")
    return value


def paced_pretrain(cfg, run_dir: str, step_sleep_s: float, hold_after: int | None = None, hold_s: float = 900) -> dict:
    """The real pretraining stage, each optimizer step followed by `step_sleep_s` of sleep (a tiny model steps in
    milliseconds; a test needs time to displace the job mid-run). Nothing else of the stage is changed.

    `hold_after`: once step `hold_after` is logged, the next step does not return until the job is told it is preempted
    (its `PreemptionGuard` has the signal) or `hold_s` pass, unless this run was already preempted after `hold_after`
    (its metrics say so: a requeued run goes on). So a test that preempts the job lands between its checkpoints however
    long the scheduler takes, instead of racing the job to its last step."""
    import forge_nb.pretrain as P
    from forge_nb.preempt import PreemptionGuard
    from forge_nb.runs import RunDir, read_metrics
    real, released = P.train_step, []
    def done_before() -> bool:
        recs = read_metrics(RunDir(run_dir).stage("pretrain").metrics_path)
        return any(r.get("event") == "preempted" and r.get("step", 0) > hold_after for r in recs)
    def paced(state, batches, rt):
        out = real(state, batches, rt)
        time.sleep(step_sleep_s)
        if hold_after is not None and state.step > hold_after and not released:
            if done_before(): released.append("earlier run")
            else:
                print(f"paced_pretrain: holding at step {state.step} until preempted (at most {hold_s:.0f} s)", flush=True)
                t0 = time.time()
                while time.time() - t0 < hold_s and not any(g.at is not None for g in PreemptionGuard.active):
                    time.sleep(0.05)
                released.append("signal" if any(g.at is not None for g in PreemptionGuard.active) else "hold_s")
                print(f"paced_pretrain: released at step {state.step} ({released[-1]}, after {time.time() - t0:.1f} s)", flush=True)
        return out
    P.train_step = paced
    return P.run_pretrain(cfg, run_dir)


def die_by_signal(sig: int):
    "Print a line, then kill this job's own process with `sig` (no result is written): what the OOM killer or a `kill -9` does."
    import signal as _s
    print("about to die", flush=True); time.sleep(0.2)
    os.kill(os.getpid(), _s.Signals(sig))


def exit_without_result(code: int = 3):
    "Leave at once with exit status `code`, no result written (as `os._exit` in a library would)."
    os._exit(code)


def add(a, b): return a + b
