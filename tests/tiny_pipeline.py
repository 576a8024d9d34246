"""A tiny data + pretrain pipeline config on standard-library text, shared by the pretraining and SLURM tests."""
import json
from pathlib import Path
from forge_nb.config import PipelineConfig, DataConfig, SourceConfig


def tiny_pipeline_config(d: Path, **pretrain) -> PipelineConfig:
    "Two standard-library sources (module source, reference manual), a 600-token tokenizer, 64-token sequences."
    import sysconfig, pydoc_data.topics as topics
    lib = Path(sysconfig.get_paths()["stdlib"])
    ref = d/"ref.jsonl"
    if not ref.exists():
        ref.write_text("".join(json.dumps({"text": v}) + "\n" for k, v in sorted(topics.topics.items())[:80]))
    pc = {"steps": 12, "micro_batch_size": 4, "log_every": 1, "eval_every": 6, "save_every": 6, "eval_batches": 2,
          "optim": {"lr": 3e-3, "warmup_steps": 3}, **pretrain}
    return PipelineConfig(name="t", runs_dir=str(d), stages=["data", "pretrain"],
        data=DataConfig(sources=[SourceConfig(name="code", path=str(lib/"json"/"*.py"), kind="text"),
                                 SourceConfig(name="ref", path=str(ref))],
                        strategy="static", weights=[0.5, 0.5], seq_len=64, val_docs=2, total_tokens=60_000, max_epochs=20),
        tokenizer={"vocab_size": 600, "train_bytes": 100_000},
        model={"depth": 2, "aspect_ratio": 64, "head_dim": 32, "max_seq_len": 64}, pretrain=pc)
