"""Checks of the data a suite names, made when it is validated, before any model loads.

A text file must exist, be UTF-8, hold text, and be long enough for one window. Tokens
are not counted here (that needs the model's tokenizer): a byte-level tokenizer makes at
least one byte per token, so a file of fewer bytes than ``seqlen`` (plus two for a BOS
and a prefix space) can never fill a window; longer files are checked by the run, which
names the token count (``paqbench.measure.perplexity.windows``).
"""

from __future__ import annotations

from pathlib import Path

from paqbench.data.resolve import check_dataset_name, looks_like_path
from paqbench.registry import Registry

#: Tokens a tokenizer may add that are not in the text (BOS, a SentencePiece prefix space).
ADDED_TOKENS = 2


def text_file_problem(path: Path, seqlen: int | None = None) -> str | None:
    """Why ``path`` cannot serve as a text dataset with windows of ``seqlen`` tokens, or None."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"dataset file {str(path)!r} does not exist"
    except OSError as exc:
        return f"cannot read dataset file {str(path)!r}: {exc.strerror or exc}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (f"expected a UTF-8 text file; found byte 0x{data[exc.start]:02x} at offset {exc.start} "
                f"of {str(path)!r}, which is not UTF-8 text")
    if not text.strip():
        return f"expected text; found an empty file {str(path)!r}"
    if seqlen is not None and len(data) + ADDED_TOKENS < seqlen:
        return (f"expected at least one window of seqlen={seqlen} tokens; found {str(path)!r} with only "
                f"{len(data)} bytes, too short for {seqlen} tokens")
    return None


def dataset_problems(registry: Registry, name: str, split: str | None, seqlen: int | None) -> list[tuple[str, str]]:
    """``(field, message)`` for each problem with dataset ``name`` at ``split`` and ``seqlen``."""
    message = check_dataset_name(registry, name)
    if message:
        return [("dataset", message)]
    if name in registry.entries["datasets"]:
        splits = registry.dataset(name).splits
        if split is not None and name != "text-file" and split not in splits:
            return [("split", f"expected one of {', '.join(splits)} (the splits of {name!r}); found {split!r}")]
        return []
    if looks_like_path(name):
        problem = text_file_problem(Path(name).expanduser(), seqlen)
        if problem:
            return [("dataset", problem)]
    return []
