"""The package's layering: no import cycles, and the API-server side never imports torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "service"
# modules that run in the API servers and the launcher: loading torch there costs ~300 MB per process
TORCH_FREE = ("service.api", "service.core", "service.runtime")


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def module_level_imports(name: str) -> set[str]:
    """The service modules ``name`` imports when it is imported (not under TYPE_CHECKING, not in functions)."""
    path = PACKAGE.parent / (name.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / name.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    known = set(module_names())
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in ast.walk(node) if not isinstance(node, ast.FunctionDef | ast.ClassDef) else ():
            if isinstance(child, ast.Import):
                found |= {alias.name for alias in child.names if alias.name in known}
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("service"):
                for alias in child.names:
                    full = f"{child.module}.{alias.name}"
                    found.add(full if full in known else child.module)
    found.discard(name)
    return {module for module in found if module in known}


def test_no_import_cycles() -> None:
    graph = {name: module_level_imports(name) for name in module_names()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, "import cycle: " + " -> ".join([*visiting[visiting.index(name) :], name])
        visiting.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)


@pytest.mark.parametrize("name", module_names())
def test_each_module_imports_alone(name: str) -> None:
    """Every module imports in a fresh interpreter (no hidden order dependency); the API-server
    side does so without loading torch."""
    code = f"import importlib, json, sys; importlib.import_module({name!r}); print(json.dumps('torch' in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    torch_loaded = json.loads(result.stdout.strip().splitlines()[-1])
    if name.startswith(TORCH_FREE):
        assert not torch_loaded, f"{name} imports torch"


def test_only_the_adapter_imports_litserve() -> None:
    """LitServe's internals change between releases: one module (service.runtime.litserve) wraps them."""
    importers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name == "litserve" or name.startswith("litserve.") for name in names):
                importers.append(str(path.relative_to(ROOT)))
    assert sorted(set(importers)) == ["service/runtime/litserve.py"]
