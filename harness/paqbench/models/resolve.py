"""Decide which registered model source reads a suite's ``model.source``."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from paqbench.registry import Registry
from paqbench.suite.schema import ModelConfig

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class ModelResolutionError(ValueError):
    """The suite names a model no source can load."""


def resolve_source(config: ModelConfig, registry: Registry) -> str:
    """Return the name of the model source that will load ``config``.

    Named models win; then an existing path (a ``.gguf`` file or a directory); then
    anything shaped like a hub id (``org/name``), which is loaded from the Hugging Face
    hub by default. Anything else is an error with the closest known names.
    """
    named = [n for n, e in registry.entries["models"].items() if not getattr(e.cls, "generic", False)]
    source = config.source
    if config.kind == "named" or (config.kind == "auto" and source in named):
        if source not in named:
            raise ModelResolutionError(_unknown(source, named))
        _check_available(registry, source, config)
        return source
    if config.kind != "auto":
        _check_available(registry, config.kind, config)
        return config.kind
    path = Path(source).expanduser()
    if (path.is_file() and path.suffix == ".gguf") or config.gguf_file:
        return "gguf"
    if path.is_dir():
        return "local"
    if path.suffix == ".gguf" or source.startswith((".", "/", "~")):
        raise ModelResolutionError(f"no such file or directory: {source!r}")
    if _HUB_ID.match(source):
        return "hub"
    raise ModelResolutionError(
        _unknown(source, named)
        + "; a hub model is written as 'organisation/name' (or set model.kind: hub), "
        "a local model as a path to its directory or .gguf file"
    )


def _unknown(source: str, named: list[str]) -> str:
    close = difflib.get_close_matches(source, named, n=2, cutoff=0.4)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown model {source!r}{hint} (embedded models: {', '.join(sorted(named))})"


def _check_available(registry: Registry, name: str, config: ModelConfig) -> None:
    cls = registry.model_source(name)
    reason = cls.unavailable_reason(config) if hasattr(cls, "unavailable_reason") else None
    if reason:
        raise ModelResolutionError(reason)
