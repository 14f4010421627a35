"""Where text comes from: the Hugging Face hub through ``datasets`` (the default), or a
local data directory laid out like the hub's files (``PAQBENCH_DATA_DIR``).

Both paths must give byte-identical text; tests compare them on the files in
``../shared/data``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "PAQBENCH_DATA_DIR"


class DataUnavailable(RuntimeError):
    """Text that is neither in the local data directory nor reachable on the hub."""


def data_dir() -> Path | None:
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


def local_file(*relative: str) -> Path | None:
    """The first of ``relative`` that exists under the data directory, if any."""
    root = data_dir()
    if root is None:
        return None
    for rel in relative:
        path = root / rel
        if path.is_file():
            return path
    return None


def hub_offline() -> bool:
    """Whether the Hugging Face libraries are told not to use the network."""
    return any(os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_cached(repo_id: str) -> bool:
    """Whether hub dataset ``repo_id`` has anything in the local Hugging Face caches
    (offline mode reads it from there). A folder is evidence, not proof of the split."""
    try:
        from huggingface_hub import constants

        hub_cache = Path(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - datasets depends on huggingface_hub
        hub_cache = Path.home() / ".cache" / "huggingface" / "hub"
    if (hub_cache / ("datasets--" + repo_id.replace("/", "--"))).is_dir():
        return True
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", hf_home / "datasets")).expanduser()
    prefix = repo_id.replace("/", "___")
    return datasets_cache.is_dir() and any(p.name.startswith(prefix) for p in datasets_cache.iterdir())


def hub_column(path: str, name: str | None, split: str, column: str, **kwargs: Any) -> list[str]:
    """One text column of a hub dataset split, through ``datasets.load_dataset``."""
    try:
        from datasets import load_dataset

        dataset = load_dataset(path, name, split=split, **kwargs)
    except Exception as exc:
        where = os.environ.get(DATA_DIR_ENV)
        local = f" (not found in {DATA_DIR_ENV}={where} either)" if where else (
            f"; to work offline set {DATA_DIR_ENV} to a directory laid out like the hub files"
        )
        raise DataUnavailable(
            f"could not load {path!r}{'/' + name if name else ''} split {split!r} from the hub: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{local}"
        ) from exc
    return list(dataset[column])


def wikitext_rows_from_raw(path: Path) -> list[str]:
    """Rows as the hub gives them from a ``wiki.<split>.raw`` file: blank rows (written
    as a single space) become ``""``, other rows keep their trailing newline."""
    raw = path.read_text(encoding="utf-8")
    return ["" if line.strip() == "" else line + "\n" for line in raw.splitlines()]


def read_json_rows(path: Path) -> list[str]:
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl_texts(path: Path, field: str = "text") -> list[str]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line)[field] for line in handle if line.strip()]
