"""The perplexity protocol of the GPTQ / SparseGPT / Wanda papers.

Tokenize the joined test text once, cut it into non-overlapping windows of ``seqlen``
tokens (the remainder is dropped), take the mean next-token NLL of each window, and
report ``exp`` of the mean over windows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from paqbench.blockwise.forward import blockwise_logits
from paqbench.blockwise.offload import offload_of


def windows(ids: torch.Tensor, seqlen: int, limit: int | None = None) -> torch.Tensor:
    """``[n, seqlen]`` non-overlapping windows of a ``[1, L]`` token row."""
    n = ids.shape[1] // seqlen
    if n == 0:
        raise ValueError(f"the text has {ids.shape[1]} tokens, fewer than one window of seqlen={seqlen}")
    if limit is not None:
        n = min(n, limit)
    return ids[0, : n * seqlen].view(n, seqlen)


@torch.inference_mode()
def window_nlls(
    model: torch.nn.Module,
    batches: torch.Tensor,
    batch_size: int = 1,
    device: torch.device | None = None,
    wrap: Callable[[Iterable[int], int], Iterable[int]] = lambda it, total: it,
) -> list[float]:
    """Mean next-token NLL (nats) of each window, computed in float32. A model whose
    weights are left on disk is evaluated block by block (:mod:`paqbench.blockwise.forward`:
    the same numbers, every block read once per chunk of windows)."""
    starts = range(0, batches.shape[0], batch_size)
    if offload_of(model) is not None:
        return blockwise_logits(model, [batches[s : s + batch_size] for s in starts], _nlls, wrap)
    device = device or next(model.parameters()).device
    nlls: list[float] = []
    for start in wrap(starts, len(starts)):
        batch = batches[start : start + batch_size].to(device)
        nlls.extend(_nlls(model(batch, use_cache=False).logits, batch))
    return nlls


def _nlls(logits: torch.Tensor, batch: torch.Tensor) -> list[float]:
    """Mean next-token NLL of each row of ``batch`` from its logits, in float32."""
    logits = logits.float()
    loss = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none"
    ).view(batch.shape[0], -1)
    return loss.mean(dim=1).tolist()
