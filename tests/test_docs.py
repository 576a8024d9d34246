"""The offline docs site (forge_nb.docs.build_site) opened page by page in headless Debian Chromium, the README
renderer and the sync checks.

Browser tests need Debian's `/usr/bin/chromium` (`scripts/setup.sh --system` installs it) and the Playwright Python
package; they never run `playwright install`. Without them they skip, and in CI fail (the `chromium` fixture, conftest.py). The full-site tests execute every notebook (about six minutes on 2 cores, on top of nbdev-test's own run of them):
marked `heavy`, run by `scripts/test.sh --heavy`; on every commit the stable subset is built, executed and opened."""
import json, os, re, shutil, subprocess, time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from conftest import in_ci, slurm_up

from forge_nb.docs import build_site, check_sync, find_pages, readme_text, render_readme, check_readme
from forge_nb.docs import fresh_kept_outputs, kept_output, stray_outputs

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/"nbs"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
STABLE = ["index.ipynb", "00_config.ipynb", "01_runs.ipynb", "02_distributed.ipynb"]

# ---------------------------------------------------------------- browser check

@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        yield b
        b.close()

def _ids(path: Path, cache: dict) -> set:
    if path not in cache: cache[path] = set(re.findall(r'\sid="([^"]+)"', path.read_text(encoding="utf-8")))
    return cache[path]

def check_site_in_browser(browser, site: Path, artifacts: Path | None = None) -> dict:
    """Open every page of `site` from file://; return {page: [problems]} for pages with problems.
    Problems: no title or h1, console errors, page errors, failed requests, any request that is not a local file
    (a CDN), internal links to missing files or missing #anchors."""
    problems, ids_cache = {}, {}
    pages = sorted(site.rglob("*.html"))
    assert pages, f"no pages in {site}"
    ctx = browser.new_context()
    for f in pages:
        rel = f.relative_to(site).as_posix()
        errs = []
        page = ctx.new_page()
        page.on("console", lambda m, errs=errs: errs.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e, errs=errs: errs.append(f"page error: {e}"))
        page.on("requestfailed", lambda r, errs=errs: errs.append(f"request failed: {r.url} ({r.failure})"))
        page.on("request", lambda r, errs=errs: None if r.url.startswith(("file://", "data:", "about:")) else errs.append(f"non-local request: {r.url}"))
        page.goto(f.as_uri(), wait_until="load")
        if not page.title().strip(): errs.append("empty <title>")
        h1 = page.locator("main h1").first
        if not h1.count() or not h1.inner_text().strip(): errs.append("no <h1> in main")
        if not page.locator("nav.sidebar a").count(): errs.append("no sidebar links")
        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))"):
            if re.match(r"^(https?:|mailto:|#)", href): continue
            target, _, frag = href.partition("#")
            tpath = (f.parent/unquote(target)).resolve()
            if not tpath.is_file(): errs.append(f"broken link {href!r}: {tpath} does not exist"); continue
            if frag and tpath.suffix == ".html" and unquote(frag) not in _ids(tpath, ids_cache):
                errs.append(f"broken anchor {href!r}: no id {frag!r} in {tpath.relative_to(site)}")
        if artifacts is not None:
            page.screenshot(path=str(artifacts/(rel.replace("/", "__") + ".png")), full_page=False)
        page.close()
        if errs: problems[rel] = errs
    ctx.close()
    return problems

@pytest.mark.browser
def test_browser_check_catches_problems(browser, tmp_path):
    "The check itself fails on a CDN script, a broken link, a missing anchor and a script error."
    site = tmp_path/"site"; (site/"sub").mkdir(parents=True)
    shell = '<html><head><title>{t}</title>{head}</head><body><nav class="sidebar"><a href="{up}index.html">home</a></nav><main><h1>{t}</h1>{body}</main></body></html>'
    (site/"index.html").write_text(shell.format(t="Home", up="", head="", body='<a href="sub/p.html#there">p</a>'))
    (site/"sub/p.html").write_text(shell.format(t="P", up="../", body='<a href="../missing.html">x</a><a href="../index.html#nowhere">y</a><h2 id="there">t</h2>',
        head='<script src="https://cdn.jsdelivr.net/npm/x.js"></script><script>undefined_fn()</script>'))
    problems = check_site_in_browser(browser, site)
    assert list(problems) == ["sub/p.html"], problems
    got = "\n".join(problems["sub/p.html"])
    for needle in ["non-local request: https://cdn.jsdelivr.net", "broken link '../missing.html'",
                   "broken anchor '../index.html#nowhere'", "undefined_fn"]:
        assert needle in got, got

def _build_and_check(browser, tmp_path, artifacts_dir, only, name, built=None):
    t = time.monotonic()
    site, t_build = built if built else (build_site(NBS, tmp_path/"_site", execute=True, timeout=600, only=only), None)
    t_build = t_build if t_build is not None else time.monotonic() - t
    t = time.monotonic()
    art = artifacts_dir/f"docs-{name}"; shutil.rmtree(art, ignore_errors=True); art.mkdir()
    problems = check_site_in_browser(browser, site, art)
    t_browser = time.monotonic() - t
    n = len(list(site.rglob("*.html")))
    print(f"[docs] {name}: {n} pages, build {t_build:.1f} s, browser check {t_browser:.1f} s")
    (art/"timings.json").write_text(json.dumps({"pages": n, "build_s": round(t_build, 1), "browser_s": round(t_browser, 1)}))
    if only is not None:       # a subset: links to notebooks it leaves out (the index's tutorial links) stay as .ipynb links
        left_out = lambda e: (m := re.match(r"broken link '([^']+\.ipynb)'", e)) and (NBS/m.group(1)).exists() and m.group(1) not in only
        problems = {k: v for k, v in ((k, [e for e in v if not left_out(e)]) for k, v in problems.items()) if v}
    assert not problems, json.dumps(problems, indent=1)
    return site

@pytest.mark.browser
def test_site_stable_subset_in_browser(browser, tmp_path, artifacts_dir):
    "The ground-layer pages (no heavy notebooks): rendered with outputs and API reference, every link resolves."
    site = _build_and_check(browser, tmp_path, artifacts_dir, [o for o in STABLE if (NBS/o).exists()], "stable")
    cfg = (site/"config.html").read_text()
    # show_doc entries: a pydantic config with its field table, a function with its docments table
    assert 'id="PipelineConfig"' in cfg and "<th>field</th>" in cfg and "<td><code>runs_dir</code></td>" in cfg
    assert 'id="override"' in cfg
    assert "<script" not in cfg and "cdn" not in cfg.lower()
    # executed outputs are there (the notebooks are committed without outputs)
    assert "output_area" in cfg
    # the sidebar lists exactly the rendered pages
    for p in ["index.html", "config.html", "runs.html", "distributed.html"]:
        assert f'href="{p}"' in cfg

@pytest.fixture(scope="module")
def full_site(tmp_path_factory):
    "Every notebook in nbs/ executed and rendered once for this module's tests: (site, pages expected, build seconds)."
    expected = {p.href for p in find_pages(NBS)}     # before the build: notebooks may be added meanwhile
    t = time.monotonic()
    site = build_site(NBS, tmp_path_factory.mktemp("full")/"_site", execute=True, timeout=600)
    return site, expected, time.monotonic() - t

@pytest.mark.heavy         # minutes: every notebook executed again (nbdev-test runs them on every commit); `scripts/test.sh --heavy`
@pytest.mark.browser
def test_full_site_in_browser(browser, tmp_path, artifacts_dir, full_site):
    "Every notebook in nbs/ executed and rendered; every page opens without errors, CDN requests or broken links."
    site, expected, t_build = full_site
    _build_and_check(browser, tmp_path, artifacts_dir, None, "full", built=(site, t_build))
    assert expected <= {f.relative_to(site).as_posix() for f in site.rglob("*.html")}

# ---------------------------------------------------------------- tutorials

TUTORIALS = sorted((NBS/"tutorials").glob("[0-9]*.ipynb"))

def _page_text(html_text: str) -> str:
    "What a reader sees of a page: tags dropped, entities unescaped, whitespace squeezed."
    import html as _html
    return re.sub(r"\s+", " ", _html.unescape(re.sub(r"<[^>]+>", " ", html_text)))

def _outputs(html_text: str) -> list:
    "The HTML of each cell output of a rendered page: from nbconvert's `output_area` to the next output or cell."
    chunks = re.split(r'<div class="output_area', html_text)[1:]
    return [re.split(r'<div class="cell[ "]', c)[0] for c in chunks]

# What each tutorial's page must show, from the outputs of its cells (not its prose): a chart drawn from the run and
# the figures the text talks about. The SLURM tutorial shows jobs that ran on the cluster when there is one, and
# says it is missing otherwise (CI: the cluster is up, and the notebook fails without it).
TUTORIAL_OUTPUTS = {
    "tutorials/first_model.html": ["validation bits per byte", "unigram bpb", "held-out loss", "compliance on", "report: first/report.html"],
    "tutorials/mix_corpora.html": ["token shares", "infeasible mix plan", "Sources (documents kept", "bytes_per_token", "document length"],
    "tutorials/slurm.html": ["#SBATCH", "partition"],
    "tutorials/align_policy.html": ["no_competitors", "compliance on", "policy compliance on held-out prompts", "rules.0 (no_competitors).regex"],
    "tutorials/studio.html": ["does not exist", "needs 'data'", "COMPLETED", "bits per byte", "studio/pretrain"],
    "tutorials/curate.html": ["curation funnel", "scan-no-text.pdf", "planted values found: []", "Receipt needed", "curate/sources/handbook.jsonl"],
}

def test_tutorials_are_pages_of_the_tutorials_section():
    "Numbered notebooks in nbs/tutorials/, first in the sidebar after the index, linked from it, exporting nothing."
    assert [p.name for p in TUTORIALS] == ["01_first_model.ipynb", "02_mix_corpora.ipynb", "03_slurm.ipynb", "04_align_policy.ipynb",
                                            "05_studio.ipynb", "06_curate.ipynb"]
    pages = find_pages(NBS)
    assert [p.rel for p in pages[1:1 + len(TUTORIALS)]] == [f"tutorials/{p.name}" for p in TUTORIALS]
    assert {f"tutorials/{p.href.split('/')[-1]}" for p in pages if p.section == "tutorials"} == set(TUTORIAL_OUTPUTS)
    index = (NBS/"index.ipynb").read_text()
    readme = (ROOT/"README.md").read_text()
    for p in TUTORIALS:
        assert f"(tutorials/{p.name})" in index and f"(nbs/tutorials/{p.name})" in readme, p.name
        srcs = ["".join(c["source"]) for c in json.loads(p.read_text())["cells"] if c["cell_type"] == "code"]
        for s in srcs:
            assert not re.search(r"^\s*#\|\s*(default_exp|export)", s, flags=re.M), f"{p.name} exports code:\n{s}"

def _public(module: str, name: str) -> bool:
    import importlib
    m = importlib.import_module(module)
    return not name.startswith("_") and name in getattr(m, "__all__", [n for n in dir(m) if not n.startswith("_")])

def test_tutorials_use_only_the_public_api():
    "Every `from forge_nb... import x` and `forge_nb.x.y` attribute in a tutorial names a public (`__all__`) name."
    import ast
    bad = []
    for p in TUTORIALS:
        for c in json.loads(p.read_text())["cells"]:
            if c["cell_type"] != "code": continue
            src = "\n".join(l for l in "".join(c["source"]).splitlines() if not l.lstrip().startswith("#|"))
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("forge_nb"):
                    bad += [f"{p.name}: {node.module}.{a.name}" for a in node.names if not _public(node.module, a.name)]
                elif isinstance(node, ast.Import):
                    bad += [f"{p.name}: import {a.name}" for a in node.names if a.name.startswith("forge_nb") and a.name != "forge_nb"]
    assert not bad, "tutorials must use only the public API:\n" + "\n".join(bad)
    assert not _public("forge_nb.pipeline", "_finish") and _public("forge_nb.pipeline", "run_pipeline")   # the check can fail

def check_tutorial_pages(site: Path, cluster: bool):
    "Each tutorial's page is in `site` with the outputs its cells produced: charts (SVG) and the figures the prose refers to."
    for href, needles in TUTORIAL_OUTPUTS.items():
        page = site/href
        assert page.is_file(), f"{href} missing from the site"
        html_text = page.read_text(encoding="utf-8")
        outs = _outputs(html_text)
        shown = _page_text(" ".join(outs))
        missing = [n for n in needles if n not in shown]
        assert not missing, f"{href}: outputs lack {missing}"
        assert "Traceback" not in shown, href
        if href != "tutorials/slurm.html":
            assert any("<svg" in o and "forge-chart" in o for o in outs), f"{href}: no chart among its outputs"
    slurm = _page_text(" ".join(_outputs((site/"tutorials/slurm.html").read_text(encoding="utf-8"))))
    if cluster:                    # the cluster's jobs are on the page: submitted, chained, finished, accounted
        assert "COMPLETED" in slurm and "afterok" in slurm and "not run:" not in slurm, slurm[:3000]
        assert "cluster-pretrain" in slurm, slurm[:3000]
    else:
        assert "No SLURM cluster answers on this machine" in slurm and "not run:" in slurm

@pytest.mark.heavy         # the executed full site, shared with test_full_site_in_browser
def test_tutorial_pages_show_their_outputs(full_site):
    "The full site (built once for this module) has every tutorial page with its outputs; in CI, the SLURM one with real jobs."
    check_tutorial_pages(full_site[0], cluster=in_ci() or slurm_up())

# ---------------------------------------------------------------- failing builds

def _nb(path: Path, *codes: str) -> Path:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": f"# {path.stem}"}]
    cells += [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": c} for c in codes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}},
                                "nbformat": 4, "nbformat_minor": 5}))
    return path

def test_build_failure_names_notebook_and_cell(tmp_path, capsys):
    from forge_nb.docs import main
    nbs = tmp_path/"nbs"
    _nb(nbs/"index.ipynb", "x = 1")
    _nb(nbs/"sub/05_broken.ipynb", "a = 1", "#| eval: false\nnot run = syntax error", "raise ValueError('bad input in the demo')")
    out = tmp_path/"_site"
    assert main(["build", "--nbs", str(nbs), "--out", str(out), "--timeout", "120"]) == 1
    err = capsys.readouterr().err
    assert "sub/05_broken.ipynb: cell 3 failed: ValueError: bad input in the demo" in err, err
    assert "raise ValueError" in err and not out.exists()      # no half-built site

def test_build_timeout(tmp_path):
    from forge_nb.docs import DocsBuildError
    nbs = tmp_path/"nbs"
    _nb(nbs/"01_slow.ipynb", "import time", "time.sleep(60)")
    t = time.monotonic()
    with pytest.raises(DocsBuildError, match=r"01_slow.ipynb: cell 2: the notebook ran over its limit of 4 s"):
        build_site(nbs, tmp_path/"_site", timeout=4, verbose=False)
    assert time.monotonic() - t < 30

# ---------------------------------------------------------------- README

def _index_nb(tmp_path) -> Path:
    if (NBS/"index.ipynb").exists(): return NBS/"index.ipynb"
    p = tmp_path/"index.ipynb"
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# forge_nb\n> tagline"},
             {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": "#| hide\nimport x"},
             {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": "#| eval: false\nrun()"}]
    p.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return p

def test_readme_deterministic(tmp_path):
    nb = _index_nb(tmp_path)
    a = render_readme(nb, tmp_path/"a.md").read_text()
    b = render_readme(nb, tmp_path/"b.md").read_text()
    assert a == b == readme_text(nb)
    assert a.startswith("# ") and "<!-- Generated from nbs/index.ipynb" in a
    assert "#|" not in a, "nbdev directives leaked into the README"
    src = json.loads(nb.read_text())
    for c in src["cells"]:
        s = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        if c["cell_type"] == "code" and re.match(r"\s*#\|\s*hide", s): assert s.split("\n", 1)[1].strip() not in a
    assert check_readme(nb, tmp_path/"a.md")
    (tmp_path/"a.md").write_text(a.replace("#", "##", 1))
    assert not check_readme(nb, tmp_path/"a.md")

# ---------------------------------------------------------------- sync checks

def _copy_project(dst: Path) -> Path:
    shutil.copytree(ROOT/"forge_nb", dst/"forge_nb", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(NBS, dst/"nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copy2(ROOT/"pyproject.toml", dst/"pyproject.toml")
    return dst

def test_check_sync_finds_orphans(tmp_path):
    root = _copy_project(tmp_path)
    base = set(check_sync(root, git=False))          # the tree as it is (other work may be in flight)
    (root/"forge_nb/handmade.py").write_text("def helper(): return 1\n")
    (root/"forge_nb/old_stage.py").write_text("# AUTOGENERATED! DO NOT EDIT! File to edit: ../nbs/33_old_stage.ipynb.\n\nx = 1\n")
    (root/"nbs/02_distributed.ipynb").unlink()        # a deleted notebook leaves its module behind
    new = [p for p in check_sync(root, git=False) if p not in base]
    assert any(p.startswith("forge_nb/handmade.py: hand-written module") for p in new), new
    assert any(p.startswith("forge_nb/old_stage.py: stale module") and "33_old_stage" in p for p in new), new
    assert any(p.startswith("forge_nb/distributed.py: stale module") for p in new), new
    assert len(new) == 3, new

def test_check_sync_untracked(tmp_path):
    if not shutil.which("git"): pytest.skip("git missing")
    root = _copy_project(tmp_path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["init", "-q"], cwd=root, check=True)
    subprocess.run(git + ["add", "-A"], cwd=root, check=True)
    subprocess.run(git + ["commit", "-qm", "x"], cwd=root, check=True)
    base = set(check_sync(root))
    (root/"forge_nb/notes.txt").write_text("scratch\n")
    new = [p for p in check_sync(root) if p not in base]
    assert new == ["forge_nb/notes.txt: untracked file in the package (git add it with its notebook, or delete it)"], new

def test_check_sync_repo_is_clean():
    "The repository itself: no hand-written or stale modules (untracked files are the commit's business)."
    assert check_sync(ROOT, git=False) == []

# ---------------------------------------------------------------- outputs kept in the notebooks

def _kept(nb: Path) -> dict:
    cells = json.loads(nb.read_text())["cells"]
    return {i: c["outputs"] for i, c in enumerate(cells) if c["cell_type"] == "code" and kept_output("".join(c["source"]))}

KEPT = [p for p in sorted(NBS.rglob("*.ipynb")) if not any(s[0] in "._" for s in p.relative_to(NBS).parts) and _kept(p)]

def test_outputs_only_in_keep_output_cells():
    assert stray_outputs(NBS) == []
    assert KEPT and all(any(v) for v in map(_kept, KEPT)), "a `#| keep_output` cell with no committed output: run forge-nb docs outputs"

@pytest.mark.parametrize("nb", KEPT, ids=lambda p: p.name)
def test_kept_outputs_are_what_the_cells_print_now(nb):
    "A kept output that no longer matches what its cell prints fails: run `forge-nb docs outputs --only NB` and commit."
    assert fresh_kept_outputs(nb, timeout=300) == _kept(nb)
