"""The foundation's promises: fast imports without torch, a useful CLI, clear config errors, and a sync check that
catches a hand-edited module."""
import os, shutil, subprocess, sys, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)

def test_import_is_fast_and_torch_free():
    code = ("import time, sys; t=time.perf_counter(); import forge_nb, forge_nb.config, forge_nb.runs, forge_nb.cli; "
            "print(time.perf_counter()-t, 'torch' in sys.modules, 'transformers' in sys.modules)")
    times = []
    for _ in range(3):
        out = run([PY, "-c", code], cwd=ROOT).stdout.split()
        assert out[1:] == ["False", "False"], f"heavy libraries imported: {out}"
        times.append(float(out[0]))
    assert sorted(times)[1] < 1.0, times

def test_cli_help():
    r = run([str(Path(PY).parent/"forge-nb"), "--help"])
    assert r.returncode == 0
    for word in ["demo", "run", "launch", "jobs", "logs", "cancel", "config", "docs"]: assert word in r.stdout

@pytest.mark.parametrize("yaml_text,field,line,did", [
    ("pretrain:\n  optim:\n    lrr: 0.1\n", "pretrain.optim.lrr", 3, "a misspelt field two levels down"),
    ("name: x\npretrain:\n  optim:\n    lr: -1\n", "pretrain.optim.lr", 4, "a negative learning rate"),
    ("data:\n  strategy: static\n  sources:\n  - {name: a, path: a.txt}\n  - {name: b, path: b.txt}\n  weights: [1, 2, 3]\n", "data.weights", 6,
     "three mixing weights for two sources"),
])
def test_config_errors_name_field_file_line(tmp_path, yaml_text, field, line, did, bad_input):
    p = tmp_path/"bad.yaml"; p.write_text(yaml_text)
    r = run([str(Path(PY).parent/"forge-nb"), "config", "validate", str(p)])
    assert r.returncode == 2
    errs = [l for l in r.stderr.splitlines() if l.strip().removeprefix("forge-nb: error: ").startswith(field + ":")]
    assert len(errs) == 1, r.stderr
    assert f"bad.yaml:{line})" in errs[0], errs[0]
    bad_input("config", did, r, names=[field, f"bad.yaml:{line}"])

@pytest.mark.slow
def test_sync_check_catches_hand_edited_module(tmp_path):
    "A clone whose forge_nb/runs.py was edited by hand (and committed) fails the sync check, saying to export."
    clone = tmp_path/"clone"
    assert run(["git", "clone", "-q", str(ROOT), str(clone)]).returncode == 0
    os.symlink(ROOT/".venv", clone/".venv")
    ok = run(["bash", "scripts/check-sync.sh"], cwd=clone)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    mod = clone/"forge_nb"/"runs.py"
    mod.write_text(mod.read_text() + "\n# a hand edit\n")
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "hand edit"], cwd=clone)
    bad = run(["bash", "scripts/check-sync.sh"], cwd=clone)
    assert bad.returncode != 0
    assert "nbdev-export" in bad.stderr and "not in sync" in bad.stderr, bad.stderr
