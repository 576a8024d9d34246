"""The `judge` policy rule (issue 24 item 2) with a tiny judge trained here: agreement with held-out labels computed in the
test, the cache (no forward pass for a repeated completion), batches scoring as one at a time, `forge-nb policy check`,
the PolicyEditor, the GRPO reward functions, and bad config naming rule, field, file and line."""
import json, re, subprocess, sys, textwrap
from pathlib import Path

import pytest

from forge_nb.config import ConfigError
from forge_nb.policy import (JudgeRule, PRICE_RUBRIC, load_policy, policy_from_yaml, price_examples, reward_functions,
                             score_rows, tiny_judge, load_judge)
import forge_nb.policy as P

FORGE = Path(sys.executable).parent/"forge-nb"

def held_out():
    "Answers in wordings and items the judge never saw; the label is read here from the text (a `$` and digits)."
    items = ["Premium", "the backup plan", "Gold", "priority support"]
    said = ["It is ${} for {}.", "{} sells at ${}.", "Expect to pay ${} for {}."]
    plain = ["{} is available in Europe.", "{} can be cancelled online.", "We recommend {} for teams."]
    out = []
    for i, it in enumerate(items):
        for j, (s, p) in enumerate(zip(said, plain)):
            price = 7 + 13 * (i * 3 + j)
            a = s.format(price, it) if "${}" == s[s.index("$"):s.index("$") + 3] and s.index("$") < s.index("{}") else s.format(it, price)
            out += [(f"How much is {it}?", a), (f"Tell me about {it}.", p.format(it))]
    return [(q, a[0].upper() + a[1:], bool(re.search(r"\$\d", a))) for q, a in out]

@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    d = tmp_path_factory.mktemp("judge")
    tiny_judge(d/"judge", PRICE_RUBRIC, price_examples(200, seed=0), steps=40, batch_size=16)
    return d

def rule(d, **kw): return JudgeRule(name="mentions_price", model=str(d/"judge"), rubric=PRICE_RUBRIC, **kw)

@pytest.mark.slow
def test_agreement_with_held_out_labels(judge):
    data = held_out()
    assert sum(y for *_, y in data) == len(data) // 2
    P._JUDGE_SCORES.clear()
    s = rule(judge).score_batch([a for _, a, _ in data], [q for q, _, _ in data])
    acc = sum((x >= 0.5) == y for x, (*_, y) in zip(s, data)) / len(data)
    assert acc >= 0.75, (acc, list(zip([round(x, 2) for x in s], [a for _, a, _ in data])))

@pytest.mark.slow
def test_cache_and_batching(judge, monkeypatch):
    data = held_out()
    qs, ans = [q for q, _, _ in data], [a for _, a, _ in data]
    m = load_judge(str(judge/"judge"))[0]
    calls, fwd = [], m.forward
    monkeypatch.setattr(m, "forward", lambda *a, **k: calls.append(1) or fwd(*a, **k))
    P._JUDGE_SCORES.clear()
    batched = rule(judge, batch_size=16).score_batch(ans, qs)
    assert len(calls) == -(-len(data) // 16)                 # one forward pass per batch of 16
    again = rule(judge, batch_size=16).score_batch(ans, qs)
    assert len(calls) == -(-len(data) // 16) and again == batched   # second call: all from the cache
    P._JUDGE_SCORES.clear()
    one = rule(judge, batch_size=1).score_batch(ans, qs)
    assert len(calls) == -(-len(data) // 16) + len(data)
    assert max(abs(a - b) for a, b in zip(batched, one)) < 1e-4
    monkeypatch.setattr(P, "JUDGE_CACHE_SIZE", 5)            # the LRU stays bounded, and a call larger than it still answers
    P._JUDGE_SCORES.clear()
    assert rule(judge).score_batch(ans, qs) == pytest.approx(batched, abs=1e-4)
    assert len(P._JUDGE_SCORES) == 5 and list(P._JUDGE_SCORES)[-1][3] == ans[-1]

@pytest.mark.slow
def test_policy_check_cli(judge):
    (judge/"policy.yaml").write_text(textwrap.dedent(f"""\
        name: judged
        rules:
          - name: mentions_price
            kind: judge
            model: judge
            rubric: "{PRICE_RUBRIC}"
            threshold: 0.5
        """))
    rows = [{"prompt": "How much is Gold?", "completion": "Gold sells at $49."},
            {"prompt": "Tell me about Gold.", "completion": "Gold can be cancelled online."}]
    (judge/"c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run([str(FORGE), "policy", "check", str(judge/"policy.yaml"), "--completions", str(judge/"c.jsonl")],
                         capture_output=True, text=True, timeout=300, cwd=judge.parent)
    assert out.returncode == 0, out.stderr
    lines = [l for l in out.stdout.splitlines() if l.strip().startswith("mentions_price") and "judge '" in l]
    assert len(lines) == 2, out.stdout
    assert "yes (p=" in lines[0] and "Does the answer mention a price?" in lines[0], lines
    assert "no (p=" in lines[1], lines
    assert out.stdout.splitlines()[0].startswith("PASS") and "FAIL" in out.stdout

@pytest.mark.slow
def test_editor_report_and_rewards(judge):
    from forge_nb.widgets.policy_editor import PolicyEditor
    yaml_ = f"rules:\n  - {{name: mentions_price, kind: judge, model: {judge/'judge'}, rubric: '{PRICE_RUBRIC}'}}\n"
    rows = [{"prompt": "How much is Gold?", "completion": "Gold sells at $49."}, {"prompt": "Hi", "completion": "Gold is available in Europe."}]
    ed = PolicyEditor(yaml_, "\n".join(json.dumps(r) for r in rows))
    assert not ed.message.value and "mentions_price" in ed.table.value
    assert [r["scores"]["mentions_price"][1].split(": ")[-1][:2] for r in ed.records] == ["ye", "no"]
    pol = policy_from_yaml(yaml_)
    recs = score_rows(pol, [r["prompt"] for r in rows], [r["completion"] for r in rows])
    f, = reward_functions(pol)
    got = f(prompts=[[{"role": "user", "content": r["prompt"]}] for r in rows], completions=[r["completion"] for r in rows])
    P._JUDGE_SCORES.clear()
    direct = [rule(judge).score_batch([r["completion"]], [r["prompt"]])[0] for r in rows]
    assert max(abs(a - b) for a, b in zip(got, direct)) < 1e-4
    assert [rec["scores"]["mentions_price"][0] for rec in recs] == pytest.approx(direct, abs=1e-4)

def test_bad_judge_config(tmp_path):
    def err(text):
        (tmp_path/"p.yaml").write_text(textwrap.dedent(text))
        with pytest.raises(ConfigError) as e: load_policy(tmp_path/"p.yaml")
        return str(e.value)
    e = err("""\
        rules:
          - name: semantic
            kind: judge
            model: no/such/folder
            rubric: "Is it polite?"
        """)
    assert "rules.0 (semantic).model" in e and "does not exist" in e and "p.yaml:4" in e and len(e.splitlines()) == 1, e
    (tmp_path/"notamodel").mkdir(); (tmp_path/"notamodel"/"x.txt").write_text("x")
    e = err("""\
        rules:
          - name: semantic
            kind: judge
            rubric: "Is it polite?"
            model: notamodel
        """)
    assert "rules.0 (semantic).model" in e and "no config.json" in e and "p.yaml:5" in e, e
    e = err("""\
        rules:
          - {name: semantic, kind: judge, model: notamodel}
        """)
    assert "rubric" in e and "p.yaml:2" in e, e
