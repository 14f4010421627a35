"""Calibration batches as the GPTQ / SparseGPT / Wanda papers draw them."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from paqbench.context import RunContext
    from paqbench.suite.schema import CalibrationConfig


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text`` as one row, tokenized once as the papers do."""
    ids = tokenizer(text, return_tensors="pt").input_ids
    return ids


def random_windows(ids: torch.Tensor, n: int, seqlen: int, seed: int) -> list[torch.Tensor]:
    """``n`` windows of ``seqlen`` tokens at random offsets of one token stream."""
    total = ids.shape[1]
    if total <= seqlen:
        raise ValueError(f"calibration text has {total} tokens, fewer than seqlen={seqlen}+1")
    rng = random.Random(seed)
    starts = [rng.randint(0, total - seqlen - 1) for _ in range(n)]
    return [ids[:, s : s + seqlen].clone() for s in starts]


def document_windows(tokenizer, documents: list[str], n: int, seqlen: int, seed: int) -> list[torch.Tensor]:
    """The papers' C4 loop: pick random documents longer than ``seqlen`` tokens and a
    random window in each."""
    rng = random.Random(seed)
    windows = []
    attempts = 0
    while len(windows) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"fewer than {n} documents are longer than seqlen={seqlen} tokens")
        doc = documents[rng.randint(0, len(documents) - 1)]
        ids = tokenizer(doc, return_tensors="pt").input_ids
        if ids.shape[1] <= seqlen:
            continue
        start = rng.randint(0, ids.shape[1] - seqlen - 1)
        windows.append(ids[:, start : start + seqlen].clone())
    return windows


def build_calibration(config: CalibrationConfig, ctx: RunContext) -> list[torch.Tensor]:
    """``n_samples`` windows of ``seqlen`` tokens (shape ``[1, seqlen]`` each) on CPU;
    at most ``ctx.limit`` of them when a quick run sets one (the first of the same draw)."""
    corpus = ctx.dataset(config.dataset, config.split)
    # A quick run (--limit) caps calibration windows too: the same draw, fewer of them.
    n_samples = config.n_samples if ctx.limit is None else min(config.n_samples, ctx.limit)
    ctx.logger.info(
        "calibration: %d x %d tokens from %s/%s", n_samples, config.seqlen, config.dataset, config.split
    )
    if corpus.documents:
        return document_windows(ctx.tokenizer, corpus.documents, n_samples, config.seqlen, config.seed)
    return random_windows(tokenize(ctx.tokenizer, corpus.text), n_samples, config.seqlen, config.seed)
