"""Reading a source file's imports with ``ast``, shared by the import-rule and
import-graph tests (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path


def module_name(path: Path, source_root: Path) -> str:
    """The dotted module name of ``path`` under ``source_root`` (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(source_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(path: Path, source_root: Path) -> str:
    """The package that relative imports in ``path`` start from."""
    name = module_name(path, source_root)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def from_module(node: ast.ImportFrom, package: str) -> str:
    """The absolute module a ``from ... import`` names, relative levels resolved against ``package``."""
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))
