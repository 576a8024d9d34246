"""Shared pytest set-up. Markers: `slow` (minutes of CPU), `slurm` (needs the local cluster: `slurm/dev-cluster up`),
`browser` (JupyterLab + Chromium)."""
import os, shutil, subprocess, pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def pytest_configure(config):
    for m, doc in [("slow", "takes minutes of CPU"), ("slurm", "needs the local SLURM cluster (slurm/dev-cluster up)"),
                   ("browser", "needs JupyterLab and Debian's Chromium")]:
        config.addinivalue_line("markers", f"{m}: {doc}")

def slurm_up() -> bool:
    if not shutil.which("sinfo"): return False
    try: return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except Exception: return False

@pytest.fixture(scope="session")
def slurm_cluster():
    "Skip unless the local SLURM cluster answers; in CI (`CI=true`) a missing cluster is a failure, not a skip."
    if not slurm_up():
        if os.environ.get("CI"): pytest.fail("the SLURM cluster is not up: run slurm/dev-cluster up")
        pytest.skip("SLURM cluster not up (slurm/dev-cluster up)")
    return True

@pytest.fixture
def artifacts_dir():
    "Folder for screenshots and other artifacts tests leave for people (test-artifacts/, git-ignored)."
    d = ROOT/"test-artifacts"; d.mkdir(exist_ok=True); return d
