"""The simulator depends on the product, never the reverse (docs/DEEP.md#decam): no module outside
`autoproc.sim` (but the demo) imports it or names it for the middleware to import, and the
simulator takes DECam's tables from `autoproc.deep.decam` instead of keeping its own copy."""

from __future__ import annotations

import ast
from pathlib import Path

import autoproc.deep.decam as decam

SRC = Path(__file__).resolve().parents[1] / "src" / "autoproc"
SIM = SRC / "sim"
ALLOWED = {SRC / "script" / "demo.py"}  # the demo is the simulator's front door


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, relative ones resolved."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[:len(package) - node.level + 1], *([base] if base else [])])
            out += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _product_files() -> list[Path]:
    return [p for p in sorted(SRC.rglob("*.py")) if SIM not in p.parents and p not in ALLOWED]


def _names_sim(module: str) -> bool:
    return module == "autoproc.sim" or module.startswith("autoproc.sim.")


def test_product_code_does_not_import_the_simulator():
    found = []
    for path in _product_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [f"{path.relative_to(SRC.parent)}:{line}: imports {mod}"
                  for line, mod in _imported(path, tree) if _names_sim(mod)]
        # A dotted name in a string is an import too, done later by the middleware (a formatter,
        # an instrument class, a bps site): only docstrings may mention the simulator.
        docs = _docstrings(tree)
        found += [f"{path.relative_to(SRC.parent)}:{node.lineno}: names {node.value!r}"
                  for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
                  and "autoproc.sim." in node.value]
    for path in sorted((SRC / "deep").rglob("*.yaml")):  # product data the middleware imports from
        found += [f"{path.relative_to(SRC.parent)}:{n}: names the simulator"
                  for n, line in enumerate(path.read_text().splitlines(), 1)
                  if "autoproc.sim." in line.split("#", 1)[0]]
    assert found == [], "\n".join(found)


def test_the_scan_sees_every_kind_of_import(tmp_path):
    """The checker itself: absolute, from-, and relative imports, and dotted names in strings."""
    fake = SRC / "deep" / "x.py"
    for code in ("import autoproc.sim.deep", "from autoproc.sim.deep import raws", "from ..sim import deep",
                 "from .. import sim"):
        assert any(_names_sim(m) for _, m in _imported(fake, ast.parse(code))), code
    assert not any(_names_sim(m) for _, m in _imported(fake, ast.parse("from . import decam\nimport autoproc.simple")))
    tree = ast.parse('"""docstring naming autoproc.sim.deep"""\nX = "autoproc.sim.deep.instrument.SimDECam"\n')
    docs = _docstrings(tree)
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in docs]
    assert strings == ["autoproc.sim.deep.instrument.SimDECam"]


def test_the_simulator_takes_decams_tables_from_the_product():
    import autoproc.sim.deep.instrument as sim_instrument

    for name in decam.__all__:
        if hasattr(sim_instrument, name):
            assert getattr(sim_instrument, name) is getattr(decam, name), name
    # No second copy anywhere in the simulator: no module binds one of decam's names to a literal,
    # and no literal spells a DECam physical filter or a run of CCD names.
    filters = set(decam.FILTERS) - {decam.OPAQUE_FILTER}
    detpos = set(decam.DETECTORS.values())
    found = []
    for path in sorted(SIM.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(SRC.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name) and t.id in decam.__all__ and not isinstance(node.value, ast.Name):
                        found.append(f"{where}:{node.lineno}: defines {t.id}")
            if isinstance(node, ast.Constant) and node.value in filters:
                found.append(f"{where}:{node.lineno}: spells the filter {node.value!r}")
            if isinstance(node, ast.List | ast.Tuple | ast.Set | ast.Dict):
                items = node.keys if isinstance(node, ast.Dict) else node.elts
                names = [e.value for e in items if isinstance(e, ast.Constant) and e.value in detpos]
                if len(names) >= 3:
                    found.append(f"{where}:{node.lineno}: lists CCD names {names[:3]}…")
    assert found == [], "\n".join(found)
