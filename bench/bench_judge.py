"""The `judge` policy rule (forge_nb.policy.JudgeRule) with a tiny judge trained here: throughput and agreement.

A judge is `tiny_chat_model` tuned (`tiny_judge`) to answer "Does the answer mention a price?" with yes or no on labelled
examples (`price_examples`). Then, on CPU:

1. throughput: completions judged per second with `batch_size` 16 (one left-padded forward pass per 16) against the
   same-run baseline `batch_size` 1 (one forward pass per completion), the cache cleared before each;
2. agreement with held-out labels: answers in wordings and items the judge never saw, labelled here from their text
   (a `$` followed by digits), against the judge's verdict (P(yes) >= 0.5); and on held-out examples from the same
   generator as its training data (another seed).

    python bench/bench_judge.py [--steps 40] [--n 96]
    python bench/bench_judge.py --quick      # 10 steps, 32 completions: checks the bench runs

Prints the figures, then the FORGE_BENCH line.
"""
import argparse, re, sys, tempfile, time
from pathlib import Path
from benchlib import emit, figure

import torch
import forge_nb.policy as P
from forge_nb.policy import JudgeRule, PRICE_RUBRIC, price_examples, tiny_judge

ITEMS = ["Premium", "the backup plan", "Gold", "priority support", "the Pro tier", "an extra seat"]
SAID = ["It is ${p} for {it}.", "{it} sells at ${p}.", "Expect to pay ${p} for {it}."]
PLAIN = ["{it} is available in Europe.", "{it} can be cancelled online.", "We recommend {it} for teams."]


def held_out() -> list:
    "New wordings and items; the label is read from the answer's text, not from how it was made."
    out = []
    for i, it in enumerate(ITEMS):
        for j, (s, p) in enumerate(zip(SAID, PLAIN)):
            out += [(f"How much is {it}?", s.format(p=7 + 13 * (3 * i + j), it=it)), (f"Tell me about {it}.", p.format(it=it))]
    return [(q, a[0].upper() + a[1:], bool(re.search(r"\$\d", a))) for q, a in out]


def agreement(rule, data) -> float:
    s = rule.score_batch([a for _, a, _ in data], [q for q, _, _ in data])
    return sum((x >= 0.5) == y for x, (*_, y) in zip(s, data)) / len(data)


def throughput(path, data, bs) -> float:
    r = JudgeRule(name="price", model=str(path), rubric=PRICE_RUBRIC, batch_size=bs)
    P._JUDGE_SCORES.clear()
    t0 = time.perf_counter()
    r.score_batch([a for _, a, _ in data], [q for q, _, _ in data])
    return len(data) / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="SFT steps tuning the judge")
    ap.add_argument("--n", type=int, default=96, help="completions timed")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick: a.steps, a.n = 10, 32
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    d = Path(tempfile.mkdtemp(prefix="bench-judge-"))
    t0 = time.perf_counter()
    path = tiny_judge(d/"judge", PRICE_RUBRIC, price_examples(200, seed=0), steps=a.steps, batch_size=16)
    print(f"tiny judge: {a.steps} SFT steps on 200 labelled examples in {time.perf_counter() - t0:.1f} s ({path})")
    timed = (price_examples(a.n, seed=2) * 2)[:a.n]
    throughput(path, timed[:4], 1)                                  # load the model once, outside the timings
    b1, b16 = throughput(path, timed, 1), throughput(path, timed, 16)
    print(f"throughput on CPU ({torch.get_num_threads()} threads), {a.n} completions: batch 1 {b1:.1f}/s, batch 16 {b16:.1f}/s "
          f"(x{b16 / b1:.2f})")
    r = JudgeRule(name="price", model=str(path), rubric=PRICE_RUBRIC)
    P._JUDGE_SCORES.clear()
    new, same = agreement(r, held_out()), agreement(r, price_examples(64, seed=1))
    print(f"agreement with held-out labels: new wordings and items {new:.1%} (n={len(held_out())}), "
          f"same generator, other seed {same:.1%} (n=64); chance 50%")
    emit("judge", [figure("judge throughput, batch 16 (CPU)", b16, "completions/s", "batch 1", b1),
                   figure("judge agreement, held-out wordings", new, "fraction", "chance", 0.5),
                   figure("judge agreement, held-out same generator", same, "fraction", "chance", 0.5)], quick=a.quick)


if __name__ == "__main__":
    sys.exit(main())
