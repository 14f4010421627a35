"""Evaluation of a model whose weights are left on disk: the same block-sequential pass.

The whole model never fits, so the windows go through it block by block, like
calibration: a pass captures what block 0 receives for a chunk of windows, runs every
block over the chunk (onloading it, then offloading it), and finally runs the model's
own forward with each block replaced by a stand-in that hands back the computed hidden
states, so embeddings, masks, final norm and head are exactly those of an ordinary
forward. Per window the arithmetic is the same as ``model(window)``: exact, and slow,
since every block is read from disk once per chunk. A chunk holds as many windows as fit
in ``hidden_budget`` bytes of hidden states (inputs and outputs of one block).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from paqbench.blockwise.offload import offload_of
from paqbench.layers import decoder_blocks
from paqbench.quant.sequential import capture_block_inputs

#: Hidden states one chunk of windows may hold (inputs and outputs of one block).
HIDDEN_BUDGET = 512 * 2**20


class _Replay(nn.Module):
    """Stands in for a decoder block during the final pass: the last one returns the
    computed hidden states, the others pass their input through."""

    def __init__(self, output: torch.Tensor | None, as_tuple: bool) -> None:
        super().__init__()
        self.output = output
        self.as_tuple = as_tuple

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = hidden_states if self.output is None else self.output
        return (out,) if self.as_tuple else out


def window_chunks(count: int, tokens_per_window: int, hidden_size: int, itemsize: int,
                  budget: int = HIDDEN_BUDGET) -> int:
    """Windows per pass so that one block's input and output hidden states fit ``budget``."""
    per_window = 2 * tokens_per_window * hidden_size * itemsize
    return max(1, min(count, budget // max(per_window, 1)))


@torch.inference_mode()
def blockwise_logits(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    score: Callable[[torch.Tensor, torch.Tensor], list[float]],
    wrap: Callable[[Iterable[int], int], Iterable[int]] | None = None,
    budget: int = HIDDEN_BUDGET,
) -> list[float]:
    """``score(logits, batch)`` for every batch of token ids, concatenated, computed block
    by block over an offloaded model (see the module docstring)."""
    offload = offload_of(model)
    if offload is None:
        raise ValueError("blockwise_logits is for a model whose weights are left on disk (model.offload: disk)")
    prefix, blocks = decoder_blocks(model)
    hidden_size = int(getattr(model.config, "hidden_size", 1))
    itemsize = torch.empty((), dtype=offload.dtype).element_size()
    per_pass = window_chunks(sum(b.shape[0] for b in batches), max(b.shape[1] for b in batches),
                             hidden_size, itemsize, budget)
    chunks: list[list[torch.Tensor]] = [[]]
    for batch in batches:
        if chunks[-1] and sum(b.shape[0] for b in chunks[-1]) + batch.shape[0] > per_pass:
            chunks.append([])
        chunks[-1].append(batch)
    scores: list[float] = []
    numbers = range(len(chunks))
    for number in numbers if wrap is None else wrap(numbers, len(chunks)):
        scores.extend(_chunk(model, chunks[number], blocks, prefix, score))
    return scores


def _chunk(
    model: nn.Module, batches: list[torch.Tensor], blocks: nn.ModuleList, prefix: str,
    score: Callable[[torch.Tensor, torch.Tensor], list[float]],
) -> list[float]:
    offload = offload_of(model)
    assert offload is not None
    inputs = capture_block_inputs(model, batches, blocks[0])
    as_tuple = False
    for index, block in enumerate(blocks):
        name = f"{prefix}.{index}"
        offload.onload(block, name)
        outputs = []
        for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs, strict=True):
            out = block(hidden, *args, **kwargs)
            as_tuple = isinstance(out, (tuple, list))
            outputs.append(out[0] if as_tuple else out)
        inputs = inputs.with_hidden(outputs)
        offload.offload(block, name)
    scores: list[float] = []
    originals = list(blocks)
    try:
        for batch, hidden in zip(batches, inputs.hidden, strict=True):
            for index in range(len(blocks)):
                blocks[index] = _Replay(hidden if index == len(blocks) - 1 else None, as_tuple)
            logits = model(batch.to(hidden.device), use_cache=False).logits
            scores.extend(score(logits, batch.to(hidden.device)))
    finally:
        for index, block in enumerate(originals):
            blocks[index] = block
    return scores
