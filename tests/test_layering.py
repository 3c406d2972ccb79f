"""The package's import structure: imports go one way (docs/contributing.md, "Layers"), and no module uses
another module's private names."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tkn"

#: Rank of each top-level part of the package; a module may import only parts of the same or a lower rank.
RANKS = {
    "tkn.validate": 0, "tkn.io": 0, "tkn.timing": 0,
    "tkn.functional": 1,
    "tkn.ops": 2,
    "tkn.layers": 3,
    "tkn.convert": 4, "tkn.flops": 4, "tkn.rescale": 4,
    "tkn.budget": 5, "tkn.summary": 5, "tkn.models": 5,
    "tkn.engine": 6, "tkn.checkpoint": 6, "tkn.data": 6, "tkn.windowfile": 6,
    "tkn.training": 7, "tkn.study": 7, "tkn.benchmark": 7, "tkn.export": 7, "tkn.viz": 7, "tkn.latency": 7,
    "tkn.commands": 8,
    "tkn.cli": 9,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _sources() -> list[tuple[str, ast.Module]]:
    return [(_module_name(p), ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))]


def _imports(tree: ast.Module) -> list[tuple[str, str, int]]:
    """``(imported module, imported name or "", line)`` for every ``tkn`` import, function-local ones included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tkn":
            for alias in node.names:
                found.append((node.module, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "tkn"]
    return found


def test_every_part_has_a_rank():
    parts = {_part(name) for name, _ in _sources() if name != "tkn"}
    assert parts <= set(RANKS), f"parts without a rank in RANKS: {sorted(parts - set(RANKS))}"


def test_imports_go_downwards():
    wrong = []
    for name, tree in _sources():
        if name == "tkn":  # the package's own __init__ re-exports the public API
            continue
        for module, imported, line in _imports(tree):
            target = f"{module}.{imported}" if imported and _is_module(f"{module}.{imported}") else module
            if target == "tkn":
                continue
            if RANKS[_part(target)] > RANKS[_part(name)]:
                wrong.append(f"{name}:{line} imports {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_private_names_across_modules():
    wrong = []
    for name, tree in _sources():
        aliases = set()
        for module, imported, line in _imports(tree):
            if imported.startswith("_") and not imported.startswith("__"):
                wrong.append(f"{name}:{line} imports {module}.{imported}")
            if imported and _is_module(f"{module}.{imported}"):
                aliases.add(imported)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases |= {a.asname or a.name for a in node.names if a.name.startswith("tkn")}
            if isinstance(node, ast.ImportFrom):
                aliases |= {a.asname for a in node.names if a.asname and _is_module(f"{node.module}.{a.name}")}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                wrong.append(f"{name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not wrong, "private names used across modules:\n" + "\n".join(wrong)


@pytest.mark.parametrize("module", ["tkn.layers", "tkn.functional", "tkn"])
def test_low_layers_do_not_load_the_engine(module):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('tkn.engine')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_checks_see_a_violation(tmp_path):
    """The rank check is not vacuous: an upward import in a low module is caught by the same functions."""
    tree = ast.parse("def f():\n    from tkn.engine import freeze\n    from tkn.functional import _secret\n")
    found = _imports(tree)
    assert ("tkn.engine", "freeze", 2) in found and ("tkn.functional", "_secret", 3) in found
    assert RANKS[_part("tkn.engine")] > RANKS[_part("tkn.functional")]
