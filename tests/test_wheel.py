"""The wheel as a user gets it (issue 26): built from this tree, installed into a bare virtual environment, used from
an empty folder. No network here, so the wheel is installed with `--no-deps` and its dependencies are those of this
environment, reached through a `.pth` file (this environment's own editable forge_nb is not: its finder is a `.pth`
in site-packages, which a path listed in another `.pth` does not load). What is tested is the wheel's own content:
the package, its console script, the site profiles it ships, and the tiny demo run from it."""
import subprocess, sys, sysconfig, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp/"dist"), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (whl,) = (tmp/"dist").glob("forge_nb-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(tmp/"bare")], check=True, timeout=300)
    py = tmp/"bare"/"bin"/"python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site/"deps-from-dev-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(whl)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return tmp, whl, tmp/"bare"/"bin"

def test_wheel_ships_the_profiles(bare_venv):
    tmp, whl, bin_ = bare_venv
    names = set(zipfile.ZipFile(whl).namelist())
    shipped = {p.name for p in (ROOT/"slurm"/"profiles").glob("*.yaml")}
    assert shipped and {f"forge_nb/profiles/{n}" for n in shipped} <= names, sorted(n for n in names if "profiles" in n)
    empty = tmp/"empty"; empty.mkdir()
    r = subprocess.run([str(bin_/"forge-nb"), "profiles"], cwd=empty, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for n in shipped: assert f"{tmp/'bare'}/lib/" in r.stdout and f"forge_nb/profiles/{n}" in r.stdout, r.stdout
    r = subprocess.run([str(bin_/"forge-nb"), "profiles", "copy", "local"], cwd=empty, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (empty/"slurm/profiles/local.yaml").read_text() == (ROOT/"slurm/profiles/local.yaml").read_text()
    r = subprocess.run([str(bin_/"forge-nb"), "profiles"], cwd=empty, capture_output=True, text=True, timeout=300)
    assert f"{empty}/slurm/profiles/local.yaml" in r.stdout                 # the copy is found first

def test_tiny_demo_from_the_wheel_in_an_empty_folder(bare_venv):
    tmp, whl, bin_ = bare_venv
    empty = tmp/"demo"; empty.mkdir()
    r = subprocess.run([str(bin_/"forge-nb"), "demo", "--size", "tiny", "--foreground"], cwd=empty, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = empty/"runs"/"demo-tiny"
    for st in ("pretrain", "sft", "rl"): assert (run/st/"final"/"config.json").exists(), st
    assert (run/"report.html").exists()
    imported = subprocess.run([str(bin_/"python"), "-c", "import forge_nb; print(forge_nb.__file__)"], cwd=empty, capture_output=True, text=True).stdout
    assert imported.startswith(str(tmp/"bare")), imported                  # the wheel's package, not the checkout's
