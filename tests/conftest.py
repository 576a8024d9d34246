"""Shared pytest set-up. Markers: `slow` (minutes of CPU), `slurm` (needs the local cluster: `slurm/dev-cluster up`),
`browser` (JupyterLab + Chromium), `soak` (long fault-injection runs: deselected unless `-m` names it, e.g.
`pytest tests/test_faults.py -m soak`). Outside CI a missing cluster or browser skips its tests; in CI (`CI` set, as CI
services do) it fails them: CI must run every test."""
import os, shutil, subprocess, pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def pytest_configure(config):
    for m, doc in [("slow", "takes minutes of CPU"), ("slurm", "needs the local SLURM cluster (slurm/dev-cluster up)"),
                   ("browser", "needs JupyterLab and Debian's Chromium"),
                   ("soak", "long fault-injection runs (>= 50 faults); deselected unless -m names soak")]:
        config.addinivalue_line("markers", f"{m}: {doc}")

def pytest_collection_modifyitems(config, items):
    "Soak tests run only when asked for by name (`-m soak`); the default suite and CI leave them out."
    if "soak" in (config.getoption("-m") or ""): return
    keep = [i for i in items if i.get_closest_marker("soak") is None]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("soak") is not None])
        items[:] = keep

# The browser the browser tests drive: Debian's `chromium` package, the one `scripts/setup.sh --system` installs.
CHROMIUM = "/usr/bin/chromium"

def in_ci() -> bool: return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")

def missing(what: str, fix: str):
    "Skip a test whose dependency is missing; in CI, fail it."
    if in_ci(): pytest.fail(f"{what} (CI is set: a missing dependency fails the test instead of skipping it): {fix}")
    pytest.skip(f"{what}: {fix}")

def slurm_up() -> bool:
    if not shutil.which("sinfo"): return False
    try: return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except Exception: return False

@pytest.fixture(scope="session")
def slurm_cluster():
    "Skip unless the local SLURM cluster answers; in CI (`CI=true`) a missing cluster is a failure, not a skip."
    if not slurm_up(): missing("the SLURM cluster is not up", "slurm/dev-cluster up")
    return True

@pytest.fixture(scope="session")
def chromium() -> str:
    "The path of Debian's Chromium, with the Playwright package to drive it; skip without them (in CI: fail)."
    if not Path(CHROMIUM).exists(): missing(f"{CHROMIUM} is missing", "bash scripts/setup.sh --system (apt-get install chromium)")
    try: import playwright.sync_api  # noqa: F401
    except ImportError: missing("the playwright package is missing", "bash scripts/setup.sh (pip install -e '.[dev]')")
    return CHROMIUM

@pytest.fixture
def artifacts_dir():
    "Folder for screenshots and other artifacts tests leave for people (test-artifacts/, git-ignored)."
    d = ROOT/"test-artifacts"; d.mkdir(exist_ok=True); return d
