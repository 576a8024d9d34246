"""What the sharded-checkpoint tests run inside their processes (local ranks and SLURM tasks): the pretraining stage with
every micro-batch's rows recorded (a hash of each row's token ids, written by the rank that trained on it), optionally
with slow background saves, and one evaluation. Pickled by value, so a SLURM job needs only forge_nb."""
import hashlib, json, sys, time
from pathlib import Path

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def record_batches(out_dir) -> None:
    "Make `forge_nb.pretrain.train_step` append each micro-batch's row hashes to `out_dir/batches-<rank>.jsonl` (step, rows)."
    import forge_nb.pretrain as P
    real, out = P.train_step, Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    def step(state, batches, rt):
        with open(out/f"batches-{rt.rank}.jsonl", "a") as f:
            for b in batches:
                rows = [hashlib.sha1(r.numpy().tobytes()).hexdigest()[:16] for r in b["input_ids"]]
                f.write(json.dumps({"step": state.step + 1, "rank": rt.rank, "rows": rows}) + "\n")
        return real(state, batches, rt)
    P.train_step = step


def slow_background_saves(seconds: float, after: int = 1) -> None:
    "Every background save after the first `after` sleeps `seconds` in its writer thread before writing its shards."
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter
    real, n = HuggingFaceStorageWriter.write_data, [0]
    def write_data(self, plan, planner):
        n[0] += 1
        if n[0] > after: time.sleep(seconds)
        return real(self, plan, planner)
    HuggingFaceStorageWriter.write_data = write_data


def pretrain_recorded(cfg_path: str, run_dir: str, record_dir: str, slow_save_s: float = 0.0) -> dict:
    "The pretraining stage of `cfg_path` in `run_dir`, recording every batch to `record_dir`."
    from forge_nb.config import load_config
    from forge_nb.pretrain import run_pretrain
    record_batches(record_dir)
    if float(slow_save_s): slow_background_saves(float(slow_save_s))
    return run_pretrain(load_config(cfg_path), run_dir, log=print)


def validate(cfg_path: str, run_dir: str, out_path: str, parallel: str = "fsdp", micro_batch_size: int = 3) -> dict:
    "Per-source validation of the seeded initial model with this process's ranks; rank 0 writes the result as JSON."
    from forge_nb.config import load_config
    from forge_nb.runs import RunDir
    from forge_nb.distributed import init_distributed, shutdown_distributed
    from forge_nb.pretrain import open_store, make_runtime, build_state, evaluate
    cfg = load_config(cfg_path)
    cfg.pretrain.parallel = parallel
    env = init_distributed(backend="gloo")
    try:
        store = open_store(cfg, RunDir(run_dir))
        rt = make_runtime(cfg.pretrain, env)
        ev = evaluate(build_state(cfg, store, rt, env).model, store, rt, micro_batch_size)
        if env.is_main: Path(out_path).write_text(json.dumps(ev))
        return ev
    finally: shutdown_distributed()
