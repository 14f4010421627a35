"""Import rules over the source tree, read with ``ast`` (nothing is imported).

Plugins are thin adapters over the library: a built-in plugin module never imports another
built-in plugin module (shared code belongs in ``paqbench``), and the library never
imports a plugin, except the plugin manager, which discovers them. Imports inside
functions count too, so a rule cannot be dodged by moving an import into a body.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.source_imports import from_module, module_name, package_of

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
HARNESS = ROOT / "harness"
PLUGIN_PACKAGE = "paqbench_plugins"
#: The one library module allowed to import the built-in plugins: it loads them.
LOADER = "paqbench.plugin_manager"


def imported_modules(path: Path, source_root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    package = package_of(path, source_root)
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = from_module(node, package)
            if node.module is None:  # `from . import x`: x is a submodule (or a name in the package)
                found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names)
            else:
                found.append((node.lineno, target))
    return found


def is_plugin_module(name: str) -> bool:
    return name == PLUGIN_PACKAGE or name.startswith(PLUGIN_PACKAGE + ".")


def plugin_to_plugin_imports(source_root: Path) -> list[str]:
    """Every import of a built-in plugin module from another one, as 'file:line -> module'."""
    problems = []
    for path in sorted((source_root / PLUGIN_PACKAGE).rglob("*.py")):
        own = module_name(path, source_root)
        for line, target in imported_modules(path, source_root):
            if is_plugin_module(target) and target != own:
                problems.append(f"{path.relative_to(source_root)}:{line} imports {target}")
    return problems


def library_to_plugin_imports(source_root: Path) -> list[str]:
    problems = []
    for path in sorted((source_root / "paqbench").rglob("*.py")):
        if module_name(path, source_root) == LOADER:
            continue
        for line, target in imported_modules(path, source_root):
            if is_plugin_module(target):
                problems.append(f"{path.relative_to(source_root)}:{line} imports {target}")
    return problems


def test_no_plugin_imports_another_plugin():
    problems = plugin_to_plugin_imports(PLUGINS)
    assert not problems, "move the shared code into the paqbench library:\n" + "\n".join(problems)


def test_library_does_not_import_plugins():
    problems = library_to_plugin_imports(HARNESS)
    assert not problems, "the library must not depend on a built-in plugin:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from paqbench_plugins.metrics.latency import Clock\n", "paqbench_plugins.metrics.latency"),
        ("def f():\n    import paqbench_plugins.metrics.params\n", "paqbench_plugins.metrics.params"),
        ("from .rtn import summarize\n", "paqbench_plugins.methods.quant.rtn"),
        ("from .. import prune\n", "paqbench_plugins.methods.prune"),
    ],
)
def test_the_rule_sees_every_form_of_import(tmp_path, source, expected):
    package = tmp_path / PLUGIN_PACKAGE / "methods" / "quant"
    package.mkdir(parents=True)
    (package / "rtn.py").write_text("X = 1\n")
    (package / "gptq.py").write_text(source)
    problems = plugin_to_plugin_imports(tmp_path)
    assert [p.split(" imports ")[1] for p in problems] == [expected]


def test_the_rule_allows_library_imports(tmp_path):
    package = tmp_path / PLUGIN_PACKAGE / "metrics"
    package.mkdir(parents=True)
    (package / "energy.py").write_text("from paqbench.measure.timing import Clock\nimport torch\n")
    assert plugin_to_plugin_imports(tmp_path) == []
