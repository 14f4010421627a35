"""Remove whole decoder blocks: how redundant each block is, and the removal itself.

* Block Influence (ShortGPT, Men et al. 2024): ``BI_i = 1 - E[cos(x_i, x_{i+1})]``, the
  expected cosine between a block's input and output hidden state over calibration
  tokens. A block that barely turns the residual stream has BI near 0 and goes first.
* Angular distance (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper
  Layers"): ``d(l, n) = E[arccos(cos(x_l, x_{l+n})) / pi]`` between the input of block
  ``l`` and the input of block ``l + n``; the ``n`` consecutive blocks starting at the
  ``l`` that minimises it are removed together. (Gromov et al. read the last token only;
  ``positions="last"`` does that, the default averages over all tokens.)

Hidden states are computed block by block (:mod:`paqbench.quant.sequential`), so memory
is one block's activations for the calibration windows (``n + 1`` of them for angular).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from paqbench.layers import decoder_blocks
from paqbench.quant.sequential import BlockInputs, capture_block_inputs, forward_block
from paqbench.structure.config import STRUCTURE_KEY

Positions = Literal["all", "last"]


def _cosines(a: list[torch.Tensor], b: list[torch.Tensor], positions: Positions) -> torch.Tensor:
    """Cosine between matching tokens of two lists of ``[batch, T, hidden]`` states."""
    values = []
    for x, y in zip(a, b, strict=True):
        if positions == "last":
            x, y = x[:, -1:], y[:, -1:]
        values.append(F.cosine_similarity(x.float(), y.float(), dim=-1, eps=1e-8).flatten())
    return torch.cat(values)


@torch.no_grad()
def _block_states(model: nn.Module, batches: Sequence[torch.Tensor]):
    """Yield ``x_0, x_1, ..., x_L``: the input of each block, then the last block's output."""
    _, blocks = decoder_blocks(model)
    was_training = model.training
    model.eval()
    try:
        inputs: BlockInputs = capture_block_inputs(model, batches, blocks[0])
        yield inputs.hidden
        for block in blocks:
            inputs = inputs.with_hidden(forward_block(block, inputs))
            yield inputs.hidden
    finally:
        model.train(was_training)


def block_influence(model: nn.Module, batches: Sequence[torch.Tensor], positions: Positions = "all") -> torch.Tensor:
    """``[L]`` Block Influence of every decoder block (ShortGPT)."""
    scores = []
    previous = None
    for states in _block_states(model, batches):
        if previous is not None:
            scores.append(1.0 - _cosines(previous, states, positions).mean().item())
        previous = states
    return torch.tensor(scores, dtype=torch.float64)


def angular_distances(
    model: nn.Module, batches: Sequence[torch.Tensor], n: int, positions: Positions = "all"
) -> torch.Tensor:
    """``[L - n + 1]`` angular distance between the input of block ``l`` and of ``l + n``."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    window: deque[list[torch.Tensor]] = deque(maxlen=n + 1)
    distances = []
    for states in _block_states(model, batches):
        window.append(states)
        if len(window) == n + 1:
            cos = _cosines(window[0], window[-1], positions).clamp(-1.0, 1.0)
            distances.append((torch.arccos(cos) / math.pi).mean().item())
    return torch.tensor(distances, dtype=torch.float64)


def drop_blocks(model: nn.Module, indices: Sequence[int]) -> list[int]:
    """Remove the decoder blocks ``indices`` and keep the model consistent: the block
    list, ``config.num_hidden_layers``, ``config.layer_types``, per-block structure
    records, and each remaining attention's ``layer_idx`` (its slot in the KV cache).
    Returns the original indices of the blocks kept."""
    prefix, blocks = decoder_blocks(model)
    drop = sorted(set(int(i) for i in indices))
    if any(i < 0 or i >= len(blocks) for i in drop):
        raise IndexError(f"block indices {drop} out of range for {len(blocks)} blocks")
    if len(drop) >= len(blocks):
        raise ValueError(f"dropping {len(drop)} of {len(blocks)} blocks would leave none")
    kept = [i for i in range(len(blocks)) if i not in drop]
    new_blocks = nn.ModuleList([blocks[i] for i in kept])
    parent_name, _, child = prefix.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new_blocks)
    for new_index, block in enumerate(new_blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    config = model.config
    config.num_hidden_layers = len(kept)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and len(layer_types) == len(blocks):
        config.layer_types = [layer_types[i] for i in kept]

    structure = getattr(config, STRUCTURE_KEY, None)
    if structure:
        setattr(config, STRUCTURE_KEY, {key: [values[i] for i in kept] for key, values in structure.items()})
    return kept
