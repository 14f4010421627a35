"""llama.cpp through ``llama-cpp-python``: logits of a GGUF on given token ids."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

INSTALL = "pip install 'llama-cpp-python>=0.3'"


class EngineMissing(RuntimeError):
    """The engine's Python package is not installed; the message has the install command."""


def import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise EngineMissing(f"llama-cpp-python is not installed ({exc}); install it with: {INSTALL}") from exc
    return llama_cpp


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def load(path: Path, n_ctx: int, n_threads: int | None = None, logits_all: bool = True) -> Any:
    """A ``Llama`` on ``path`` with a context of ``n_ctx`` tokens, quiet."""
    llama_cpp = import_llama_cpp()
    threads = n_threads or default_threads()
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
        n_threads_batch=threads, logits_all=logits_all, verbose=False,
    )


def logits(path: Path, ids: torch.Tensor, n_threads: int | None = None) -> torch.Tensor:
    """``[n, seqlen, vocab]`` logits of each window of ``ids``, each from a fresh context
    (no state carried between windows, like the perplexity protocol)."""
    llm = load(path, n_ctx=ids.shape[1], n_threads=n_threads)
    try:
        rows = []
        for row in ids.tolist():
            llm.reset()
            llm.eval(row)
            rows.append(torch.from_numpy(llm.scores[: len(row)].copy()))
        return torch.stack(rows)
    finally:
        llm.close()
