"""Find the dataset a suite names: a registered name, or a path to a local text file."""

from __future__ import annotations

from pathlib import Path

from paqbench.interfaces import Dataset
from paqbench.registry import Registry, UnknownNameError


def looks_like_path(name: str) -> bool:
    return "/" in name or name.endswith((".txt", ".text", ".md"))


def open_dataset(registry: Registry, name: str) -> Dataset:
    """An instance of the dataset called ``name`` (or a text-file dataset for a path)."""
    if name in registry.entries["datasets"]:
        return registry.dataset(name)()
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"dataset file {name!r} does not exist")
        return registry.dataset("text-file")(path)
    raise UnknownNameError("datasets", name, registry.names("datasets"))


def check_dataset_name(registry: Registry, name: str) -> str | None:
    """None if ``name`` is usable, else the error message."""
    try:
        open_dataset(registry, name)
    except (UnknownNameError, FileNotFoundError) as exc:
        return str(exc)
    return None
