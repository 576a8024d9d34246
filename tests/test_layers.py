"""The layer rule of architecture.md, checked on the exported package: an import only ever points down.

Every module is exported from one numbered notebook (`nbs/.../NN_name.ipynb`, named in the module's first lines);
the number is its layer order. Every import statement counts, at the top of a module or inside a function."""
import ast, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT/"forge_nb"


def _modules() -> dict:
    "Module name -> (file, notebook number) for every exported module."
    out = {}
    for f in PKG.rglob("*.py"):
        m = re.search(r"File to edit: \S*?/(\d+)_\w+\.ipynb", f.read_text()[:600])
        if m: out[".".join(f.relative_to(ROOT).with_suffix("").parts)] = (f, int(m.group(1)))
    return out


def _imports(name: str, f: Path, known) -> set:
    "The forge_nb modules that `name` imports anywhere in its file."
    pkg, found = name.rsplit(".", 1)[0].split("."), set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else [])) if node.level else (node.module or "")
            cands = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import): cands = [a.name for a in node.names]
        else: continue
        found |= {c for c in cands if c in known and c != name}
    return found


# the one arrow allowed up: the command line (80) offers the docs builder (90, tooling beside the package) as `forge-nb docs`
ALLOWED = {("forge_nb.cli", "forge_nb.docs")}


def test_imports_point_down():
    mods = _modules()
    assert {"forge_nb.config", "forge_nb.runs", "forge_nb.cli"} <= set(mods), sorted(mods)
    up = [f"{m} (notebook {n:02d}) imports {d} (notebook {mods[d][1]:02d})"
          for m, (f, n) in sorted(mods.items()) for d in sorted(_imports(m, f, mods)) if mods[d][1] > n and (m, d) not in ALLOWED]
    assert not up, "imports that point up a layer (or form a cycle):\n  " + "\n  ".join(up)


def test_layer_check_sees_an_upward_import(tmp_path):
    "The check is not vacuous: config importing runs (the cycle it replaced) is reported."
    mods = _modules()
    f = tmp_path/"config.py"
    f.write_text(mods["forge_nb.config"][0].read_text() + "\ndef _f():\n    from forge_nb.runs import RunDir\n")
    assert "forge_nb.runs" in _imports("forge_nb.config", f, mods)
