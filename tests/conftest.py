"""Shared pytest set-up. Markers: `slow` (minutes of CPU), `slurm` (needs the local cluster: `slurm/dev-cluster up`),
`browser` (JupyterLab + Chromium), `bad_input` (given automatically to every test that takes the `bad_input` fixture,
below: the tests the bad-input catalogue is made from), `soak` (long fault-injection runs: deselected unless `-m` names
it, e.g. `pytest tests/test_faults.py -m soak`), `full_demo` (the whole demo at its own settings: `-m full_demo`), `heavy`
(minutes each, run by `scripts/test.sh --heavy`, not on every commit: `-m heavy`).
Outside CI a missing cluster or browser skips its tests; in CI (`CI` set, as CI services do) it fails them: CI must run every test."""
import dataclasses, json, os, re, shlex, shutil, subprocess, pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def pytest_configure(config):
    for m, doc in [("slow", "takes minutes of CPU"), ("slurm", "needs the local SLURM cluster (slurm/dev-cluster up)"),
                   ("browser", "needs JupyterLab and Debian's Chromium"),
                   ("bad_input", "asserts what a user sees on bad input (the `bad_input` fixture; the docs' catalogue page)"),
                   ("soak", "long fault-injection runs (>= 50 faults); deselected unless -m names soak"),
                   ("full_demo", "the whole `forge-nb demo` at its own settings (its time: bench/bench_demo.py); deselected unless -m names full_demo"),
                   ("heavy", "minutes each (the executed full docs site, 800 pretraining steps, the gpu.sh dry run): scripts/test.sh --heavy; deselected unless -m names heavy")]:
        config.addinivalue_line("markers", f"{m}: {doc}")

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

# Secret-looking environment values (issue 14, item 5): set for real runs, then every file the runs wrote is searched for
# them. Distinctive, so any copy is found; named as users name them (each matches forge_nb.config.SECRET_NAME).
SECRETS = {"HF_TOKEN": "hf_" + "fakeQ7tokenZ3v9K2mW8", "WANDB_API_KEY": "wandb" + "-fake-5c1e9a77d0b24f3e",
           "AWS_SECRET_ACCESS_KEY": "aws" + "FakeSecret+Key/4Jr8Lp2Nq"}

def files_holding_secrets(root, secrets:dict=SECRETS) -> list:
    "(file, variable) for every file under `root` whose bytes hold a secret's value (pickles, logs, scripts, weights included)."
    out = []
    for f in Path(root).rglob("*"):
        if f.is_file() and not f.is_symlink():
            b = f.read_bytes()
            out += [(str(f), k) for k, v in secrets.items() if v.encode() in b]
    return out

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

# ---------------------------------------------------------------- the bad-input catalogue
# The docs page nbs/99_bad_inputs.ipynb lists every class of bad input and the one line the user sees. It is made from
# the tests that assert those lines, through this fixture:
#
#     def test_typo(bad_input, tmp_path):
#         (tmp_path/"typo.yaml").write_text("pretrain:\n  stesp: 3\n")
#         r = forge("config", "validate", "typo.yaml", cwd=tmp_path)   # a CompletedProcess (a subprocess, or test_catalogue's
#                                                                     # `forge` fixture: forge-nb in this process)
#         bad_input("config", "a misspelt field in the YAML", r, names=["pretrain.stesp", "typo.yaml:2"])
#
# `bad_input(category, did, seen, names=(), subs=(), problems=1)`:
#   category  a key of forge_nb.docs.CATALOGUE_SECTIONS (config, data, inputs, tokenizer, cluster, checkpoint, sft,
#             preference, policy): the section of the page
#   did       what the user did, a short phrase (the entry's title; unique within its section)
#   seen      what they saw: a CompletedProcess of `forge-nb ...` (its stderr; the entry shows the command too), an
#             exception or `pytest.raises`' ExceptionInfo (shown as `Type: message`), or a string
#   names     what the line must name: the field, `file:line`, the rule, the partition (checked to be in it)
#   subs      [(regex, replacement)] for parts that differ between machines or runs (job ids, this machine's GPUs)
#   problems  how many problems the input has: one is one line; several are a header line and one indented line each
# It asserts the message's properties (a non-zero exit, one error line from `forge-nb` besides the known follow-ups,
# no traceback; an exception message of one line; one line per problem; every `names` in it), then checks that the
# committed page shows exactly this entry; it returns the message. Paths under pytest's temporary folders are shown as
# `~/proj/...`; anything else that changes from run to run (a job id, a timing) needs a `subs` pattern.
# `forge-nb docs catalogue` runs `pytest -m bad_input` with FORGE_CATALOGUE_OUT set: entries are then recorded, not
# checked, and the page is rewritten from them. So after changing a message: run it, and commit the page.
# A test may call the fixture several times (one entry each). tests/test_catalogue.py checks that the page is what
# its entries render and that it names exactly the tests that take the fixture.

CATALOGUE_OUT = os.environ.get("FORGE_CATALOGUE_OUT")     # set by `forge-nb docs catalogue`
_FOLLOW_UP = re.compile(r"^forge-nb: (stage '[^']+' failed \(|run it again with --debug)")

def pytest_collection_modifyitems(config, items):
    "Mark the bad-input tests; soak, full_demo and heavy tests run only when asked for by name (`-m soak`, `-m full_demo`, `-m heavy`): the default suite and CI's per-commit run leave them out."
    for item in items:
        if "bad_input" in getattr(item, "fixturenames", ()): item.add_marker(pytest.mark.bad_input)
    for opt_in in ("soak", "full_demo", "heavy"):
        if opt_in in (config.getoption("-m") or ""): continue
        keep = [i for i in items if i.get_closest_marker(opt_in) is None]
        if len(keep) < len(items):
            config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker(opt_in) is not None])
            items[:] = keep

def _test_ref(item) -> str: return f"{Path(item.path).relative_to(ROOT).as_posix()}::{item.originalname}"

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    "While the catalogue is generated, a skipped bad-input test is recorded (its entries on the page are then kept)."
    rep = (yield).get_result()
    if CATALOGUE_OUT and rep.skipped and item.get_closest_marker("bad_input"):
        with open(CATALOGUE_OUT, "a") as f: f.write(json.dumps({"skipped": _test_ref(item)}) + "\n")

def _one_per_problem(lines:list, problems:int, show:str):
    if problems == 1: assert len(lines) == 1, f"expected one line: {show}"
    else:
        assert len(lines) == problems + 1 and lines[0].rstrip().endswith(":") and all(l[:1].isspace() for l in lines[1:]), \
            f"expected a header and one indented line for each of {problems} problems: {show}"

def seen_line(seen, problems:int=1) -> tuple[str, str]:
    "(command, what the user sees) from a CompletedProcess, an exception (or ExceptionInfo) or a string; asserts one line per problem."
    if isinstance(seen, subprocess.CompletedProcess):
        err = seen.stderr if isinstance(seen.stderr, str) else (seen.stderr or b"").decode()
        show = f"exit {seen.returncode}; stderr:\n{err[-3000:]}"
        assert seen.returncode != 0, f"a bad input must fail: {show}"
        assert "Traceback (most recent call last)" not in err, f"a traceback for a bad input: {show}"
        lines = [l for l in err.splitlines() if l.strip()]
        main = [l for l in lines if not _FOLLOW_UP.match(l)]
        assert main and main[0].startswith("forge-nb"), f"expected an error line from forge-nb: {show}"
        _one_per_problem(main, problems, show)
        args = seen.args if isinstance(seen.args, str) else shlex.join(map(str, seen.args))
        return re.sub(r"\S*/forge-nb\b", "forge-nb", args, count=1), "\n".join(main)
    if isinstance(seen, pytest.ExceptionInfo): seen = seen.value
    if isinstance(seen, BaseException):
        msg = f"{type(seen).__name__}: {seen}"
        assert str(seen).strip(), f"an exception without a message: {msg!r}"
        _one_per_problem(msg.splitlines(), problems, repr(msg))
        return "", msg
    assert isinstance(seen, str) and seen.strip(), f"a message expected, got {seen!r}"
    _one_per_problem(seen.strip().splitlines(), problems, repr(seen))
    return "", seen.strip()

def _normalize(text:str, base:Path, subs=()) -> str:
    for b in {str(base), str(base.resolve())}:
        text = re.sub(re.escape(b) + r"/[^/\s'\"():,]+", "~/proj", text)
    text = text.replace(str(ROOT), "~/forge_nb")        # a clone's own files, wherever the clone is
    for pat, rep in subs: text = re.sub(pat, rep, text)
    return text

_PAGE = {}

def catalogue_page_entries() -> list:
    "The entries on the committed page (read once per session)."
    from forge_nb.docs import CATALOGUE_PAGE, page_markdown, parse_catalogue
    if "entries" not in _PAGE:
        p = ROOT/"nbs"/CATALOGUE_PAGE
        _PAGE["entries"] = parse_catalogue(page_markdown(p)) if p.exists() else []
    return _PAGE["entries"]

@pytest.fixture
def bad_input(request, tmp_path_factory):
    "Assert what a user sees on a bad input, and check (or, generating the docs, record) it as a catalogue entry."
    from forge_nb.docs import BadInput, CATALOGUE_SECTIONS, CATALOGUE_PAGE, catalogue_entry
    base = tmp_path_factory.getbasetemp()
    test = _test_ref(request.node)
    def check(category:str, did:str, seen, names=(), subs=(), problems:int=1) -> str:
        assert category in CATALOGUE_SECTIONS, f"category {category!r}: expected one of {list(CATALOGUE_SECTIONS)}"
        command, line = seen_line(seen, problems)
        line, command = _normalize(line, base, subs), _normalize(command, base, subs)
        for n in names:
            assert _normalize(str(n), base, subs) in line, f"the message does not name {n!r}: {line}"
        entry = BadInput(category, did, line, test, command)
        if CATALOGUE_OUT:
            with open(CATALOGUE_OUT, "a") as f: f.write(json.dumps({"entry": dataclasses.asdict(entry)}) + "\n")
        else:
            assert entry in catalogue_page_entries(), (
                f"the bad-input catalogue (nbs/{CATALOGUE_PAGE}) does not show this entry as the code gives it now:\n\n"
                f"{catalogue_entry(entry)}\n\nrun `forge-nb docs catalogue` and commit the page")
        return line
    return check


# The RL tests' inputs (tests/test_rl.py, tests/test_rl_signal.py), built once per session: the demo's support task and a
# tiny chat model a few SFT steps in (the tests need a model that samples, not a good one).
@pytest.fixture(scope="session")
def task(tmp_path_factory):
    from forge_nb.demo import demo_task
    return demo_task(tmp_path_factory.mktemp("task"), n_chat=300, n_prompts=32, n_heldout=8)


@pytest.fixture(scope="session")
def base_model(task, tmp_path_factory):
    from forge_nb.trl_stage import tiny_chat_model
    return tiny_chat_model(tmp_path_factory.mktemp("m") / "sft", task["chat"], steps=20)
