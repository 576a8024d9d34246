"""What every benchmark prints last: one machine-readable line that `bench/run` reads (never the prose above it).

    FORGE_BENCH {"bench": "sft", "quick": false, "figures": [{"name": ..., "value": ..., "unit": ...,
                 "baseline": "plain TRL SFTTrainer", "baseline_value": ..., "ratio": ..., "better": "higher"}]}

`ratio` is value / baseline_value (None when there is no same-run baseline); `better` says which direction is good,
so a reader of the table knows whether 0.8 is a win (latency) or a loss (throughput).
"""
import json, math

PREFIX = "FORGE_BENCH "


def figure(name: str, value: float, unit: str, baseline: str | None = None, baseline_value: float | None = None,
           better: str = "higher", note: str = "") -> dict:
    "One row of the table: a measured figure and, when there is one, its same-run baseline."
    ok = baseline_value not in (None, 0) and value is not None and not math.isnan(baseline_value)
    return {"name": name, "value": value, "unit": unit, "baseline": baseline, "baseline_value": baseline_value,
            "ratio": value / baseline_value if ok else None, "better": better, "note": note}


def emit(bench: str, figures: list, quick: bool = False, **extra):
    "Print the machine-readable result line (last line of a bench's output)."
    print(PREFIX + json.dumps({"bench": bench, "quick": quick, "figures": figures, **extra}), flush=True)


def parse(output: str) -> dict | None:
    "The last result line in a bench's output, decoded (None if the bench printed none)."
    for line in reversed(output.splitlines()):
        if line.startswith(PREFIX): return json.loads(line[len(PREFIX):])
    return None
