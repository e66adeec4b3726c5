"""The layers of ARCHITECTURE.md hold: who may import ray and torch, and the size of a module.

Imports are read from the source (every ``import`` statement, at module level or inside a
function), so a lazy import counts as well; the spec layer is also imported in a fresh
interpreter to check that nothing it pulls in loads torch or ray.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "raybench"
# Where `ray` may be imported: the driver layer, the real shaped link, and the CLI that starts Ray.
RAY_ALLOWED = ("driver/", "netem/", "sweep.py")
MAX_LINES = 400


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (type hints only, never executed)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def imported(path: Path) -> set[str]:
    """Absolute module names that ``path`` imports anywhere in its body (relative imports resolved),
    leaving out imports for type checkers only."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return names


def top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def test_the_walker_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "raybench" / "x"
    pkg.mkdir(parents=True)
    f = pkg / "m.py"
    f.write_text("def f():\n    import ray.train\n\nfrom . import y\nfrom ..worker import z\n"
                 "if TYPE_CHECKING:\n    import torch\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert {"ray.train", "raybench.x.y", "raybench.worker.z"} <= imported(f)
        assert "torch" not in imported(f)
    finally:
        ROOT = saved


def test_only_the_driver_netem_and_the_sweep_cli_import_ray():
    offenders = [rel(m) for m in modules() if "ray" in top(imported(m)) and not rel(m).startswith(RAY_ALLOWED)]
    assert offenders == []


def test_spec_imports_neither_torch_nor_ray_even_through_raybench_modules():
    """The spec layer and every raybench module it reaches (transitively) are free of both."""
    seen, todo = set(), [m for m in modules() if rel(m).startswith("spec/")]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        names = imported(m)
        assert not top(names) & {"torch", "ray"}, f"{rel(m)} imports {sorted(top(names) & {'torch', 'ray'})}"
        for n in names:
            if n.startswith("raybench."):
                parts = n.split(".")[1:]
                for cand in (PACKAGE.joinpath(*parts).with_suffix(".py"), PACKAGE.joinpath(*parts, "__init__.py")):
                    if cand.is_file():
                        todo.append(cand)
                # importing a.b.c runs a/__init__ and a/b/__init__ too
                for i in range(1, len(parts)):
                    init = PACKAGE.joinpath(*parts[:i], "__init__.py")
                    if init.is_file():
                        todo.append(init)
    assert any(rel(m) == "models/__init__.py" for m in seen)  # the registries were walked
    assert any(rel(m) == "worker/comm/__init__.py" for m in seen)


def test_spec_loads_without_torch_or_ray_in_a_fresh_interpreter():
    code = ("import sys, raybench.spec.config, raybench.spec.schedule\n"
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_no_module_is_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_every_layer_says_what_it_is():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 80, f"{rel(init)} needs a docstring saying what the layer does"
