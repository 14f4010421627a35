"""Engine backends of the generation metrics (``latency``, ``memory``, ``samples``).

``backend: torch`` (the default) runs paqbench's in-memory model. ``llama.cpp`` and
``vllm`` run the artifact the run's export phase wrote (``gguf``, ``compressed-tensors``;
:attr:`paqbench.RunContext.exports`), with the same prompt ids and token counts, so that a
number says what the model costs in the engine that will serve it. Whatever stops an
engine here (no export, a failed export, a missing package, no CUDA device) is an
:class:`EngineUnavailable` whose message the metric records as each measurement's reason.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from paqbench.engines.llamacpp import LlamaCppEngine
from paqbench.engines.types import (  # noqa: F401  (the package's public names)
    EXPORT_OF,
    INSTALL,
    Backend,
    Engine,
    EngineTiming,
    EngineUnavailable,
)
from paqbench.engines.vllm import VllmEngine

#: The package each engine backend imports.
_MODULE = {"llama.cpp": "llama_cpp", "vllm": "vllm"}


def default_threads() -> int:
    """torch's intra-op thread count: the torch backend's, so both run on as many cores."""
    import torch

    return torch.get_num_threads()


def require_package(backend: str) -> None:
    """Raise :class:`EngineUnavailable` with the install command when the engine's Python
    package is missing (checked without importing it)."""
    module = _MODULE[backend]
    try:
        missing = importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a None entry in sys.modules (blocked), a broken install
        missing = True
    if missing:
        raise EngineUnavailable(f"backend {backend} needs the {module} package, which is not installed; "
                                f"install it with: {INSTALL[backend]}")


def artifact(ctx: Any, backend: str) -> Path:
    """The run's export that ``backend`` loads, or :class:`EngineUnavailable` saying why
    there is none (the suite does not export it, or the export was unavailable/failed)."""
    target = EXPORT_OF[backend]
    record = (getattr(ctx, "exports", None) or {}).get(target)
    if record is None:
        raise EngineUnavailable(f"backend {backend} runs the run's {target} export, and this run has none: "
                                f"add `export: [{target}]` to the suite (or to this pipeline)")
    if record.status != "ok" or not record.path:
        raise EngineUnavailable(f"the run's {target} export is {record.status}: {record.reason}")
    path = Path(record.path)
    if not path.exists():
        raise EngineUnavailable(f"the run's {target} export {path} no longer exists")
    return path


def open_engine(backend: str, ctx: Any, n_ctx: int, threads: int | None, **options: Any) -> Engine:
    """Load the run's artifact in ``backend``. Raises :class:`EngineUnavailable`."""
    require_package(backend)
    path = artifact(ctx, backend)
    if backend == "llama.cpp":
        return LlamaCppEngine(path, n_ctx, threads or default_threads())
    if backend == "vllm":
        return VllmEngine(path, n_ctx, **options)
    raise ValueError(f"unknown engine backend {backend!r}")


def missing_exports(backend: str, exports: list[str]) -> str | None:
    """The export target ``backend`` needs when ``exports`` lacks it (for validation)."""
    target = EXPORT_OF.get(backend)
    return target if target is not None and target not in exports else None

