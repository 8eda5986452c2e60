"""The package layout docs/architecture.md describes: imports run one way, and no two modules import each other.

Every ``import`` counts, the ones inside functions and under ``TYPE_CHECKING`` too: a lazy import is
still a dependency, it only moves the cost.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "slakevqa"

# Lowest first: a package may import its own modules and those of the packages before it, never after.
# The root's infrastructure modules (errors, records, config, files, distributed) are the bottom layer;
# cli and __main__ sit with the commands on top.
LAYERS: tuple[str, ...] = ("", "data", "scoring", "inputs", "models", "kernels", "runs", "evaluation",
                           "training", "reporting", "commands")
TOP_MODULES = {"slakevqa.cli", "slakevqa.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def exists(name: str) -> bool:
    base = PACKAGE.parent / name.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def imported_modules(path: Path, name: str | None = None) -> set[str]:
    """The ``slakevqa`` modules ``path`` (module ``name``) imports (``from pkg import module`` names the module)."""
    name, found = name or module_name(path), set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "slakevqa"}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.split(".")[0] != "slakevqa":
                continue
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if exists(f"{target}.{alias.name}") else target)
    return found


def layer_of(module: str) -> int:
    if module in TOP_MODULES:
        return LAYERS.index("commands")
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else ""
    return LAYERS.index(top)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return {module_name(path): imported_modules(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_package_has_a_layer() -> None:
    packages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert packages == set(LAYERS) - {""}


def test_docs_architecture_lists_the_layers_in_this_order() -> None:
    """docs/architecture.md's package table names the same layers, lowest first."""
    page = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = page.split("## Packages and the direction of imports", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| package", "| ---"))]
    named = [re.search(r"`(\w+)/`", row).group(1) if row.startswith("| `") else "" for row in rows]
    assert named == list(LAYERS)


def test_every_file_docs_architecture_names_exists() -> None:
    page = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    tests = set(re.findall(r"tests/test_\w+\.py", page))
    modules = set(re.findall(r"`((?:\w+/)+\w+\.py)`", page)) - tests
    assert tests and modules
    assert [t for t in sorted(tests) if not (PACKAGE.parents[1] / t).is_file()] == []
    assert [m for m in sorted(modules) if not (PACKAGE / m).is_file()] == []


def test_imports_run_one_way(graph: dict[str, set[str]]) -> None:
    upward = [f"{module} imports {target} ({LAYERS[layer_of(target)] or 'root'} is above "
              f"{LAYERS[layer_of(module)] or 'root'})"
              for module, targets in graph.items() for target in sorted(targets)
              if layer_of(target) > layer_of(module)]
    assert upward == []


def test_no_two_modules_import_each_other(graph: dict[str, set[str]]) -> None:
    """No circle of any length (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    assert circles == []


def test_the_checker_sees_an_upward_and_a_lazy_import(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from slakevqa.training.train import train\n", encoding="utf-8")
    assert imported_modules(source, "slakevqa.models.probe") == {"slakevqa.training.train"}
    assert layer_of("slakevqa.training.train") > layer_of("slakevqa.models.loading")


@pytest.mark.parametrize(("package", "absent"), [
    ("slakevqa.models", ("slakevqa.training", "slakevqa.evaluation", "slakevqa.kernels")),
    ("slakevqa.inputs.builder", ("slakevqa.models", "torch", "transformers")),
    ("slakevqa.scoring", ("slakevqa.inputs", "slakevqa.models", "torch")),
])
def test_importing_a_layer_loads_nothing_above_it(package: str, absent: tuple[str, ...]) -> None:
    code = f"import importlib, sys\nimportlib.import_module({package!r})\nprint(sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in absent:
        assert f"'{name}'" not in loaded and f"'{name}." not in loaded, f"{package} loaded {name}"
