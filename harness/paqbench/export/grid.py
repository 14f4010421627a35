"""The integer grid of a packed layer, as export targets need to see it.

paqbench stores ``W[o, i] = (code[o, i] - zero[o, g]) * scale[o, g]`` with ``g =
g_idx[i]`` (any assignment of columns to groups, the last group possibly short). A target
with fixed-size blocks along the input (GGUF: 32 columns; compressed-tensors: one group
size that divides the width) can hold these values exactly when every block lies inside
one paqbench group: the block then takes its group's scale and zero, and the codes are
copied. :func:`block_groups` finds that per-block group, or says it does not exist
(act-order ``g_idx``, a group boundary inside a block).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from paqbench.export.capability import Capability, check_target, converted, exact


@dataclass
class IntegerGrid:
    """Unpacked codes ``[out, in]`` (uint8), scales ``[out, G]`` (float16), zeros ``[out, G]``
    (uint8 codes), ``g_idx`` ``[in]`` and the width in bits."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    bits: int

    @property
    def mid(self) -> int:
        return 1 << (self.bits - 1)

    @property
    def symmetric(self) -> bool:
        """Whether every zero point is the mid code (then ``(code - mid) * scale``)."""
        return bool((self.zeros == self.mid).all())

    def dequantize(self) -> torch.Tensor:
        index = self.g_idx.long()
        return (self.codes.float() - self.zeros.float()[:, index]) * self.scales.float()[:, index]


def grid_of(module: nn.Module) -> IntegerGrid:
    """The grid of a layer in :class:`~paqbench.quant.linear.QuantizedLinear`'s layout
    (``QuantizedLinear``, ``QuantizedEmbedding``)."""
    quantized = module.quantized_weight()
    return IntegerGrid(quantized.codes, quantized.scales, quantized.zeros, quantized.g_idx, module.bits)


def block_groups(g_idx: torch.Tensor, block: int) -> torch.Tensor | None:
    """The paqbench group of each block of ``block`` consecutive columns, ``[in / block]``,
    or None when the width is not a multiple of ``block`` or a block spans two groups."""
    width = g_idx.numel()
    if block < 1 or width % block:
        return None
    blocks = g_idx.long().view(width // block, block)
    if not bool((blocks == blocks[:, :1]).all()):
        return None
    return blocks[:, 0].contiguous()


def dividing_group_size(g_idx: torch.Tensor) -> int | None:
    """The largest group size that divides the width and puts every group of that size
    inside one paqbench group (the whole width: one group per channel); None if only
    single columns do (act-order) — a group size of 1 is no format anyone loads."""
    width = g_idx.numel()
    for size in sorted((d for d in range(2, width + 1) if width % d == 0), reverse=True):
        if block_groups(g_idx, size) is not None:
            return size
    return None


def per_block(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``values[:, groups]``: one scale or zero per block, repeated from its group."""
    return values.index_select(1, groups.to(values.device))


GGUF_BLOCK = 32


def gguf_type(grid: IntegerGrid) -> str | None:
    """The GGML block type that holds ``grid`` from its codes, or None."""
    if block_groups(grid.g_idx, GGUF_BLOCK) is None:
        return None
    if grid.bits == 4:
        return "Q4_0" if grid.symmetric else "Q4_1"
    if grid.bits == 8 and grid.symmetric:
        return "Q8_0"
    return None


def integer_grid_capability(module: nn.Module, target: str, *, packed_in_ct: bool = True) -> Capability:
    """Capability of a layer in the integer-grid layout (shared by ``QuantizedLinear`` and
    ``QuantizedEmbedding``; ``packed_in_ct=False`` for layers compressed-tensors cannot
    pack, such as token tables)."""
    check_target(target)
    grid = grid_of(module)
    if target == "gguf":
        kind = gguf_type(grid)
        if kind in ("Q4_0", "Q8_0"):
            return exact(f"{kind} from the codes")
        if kind == "Q4_1":
            return converted("Q4_1 from the codes", "codes and scales copied; min = -zero*scale rounded to float16")
        return converted("F16", _why_not_gguf(grid))
    if not packed_in_ct:
        return converted("float16 tensor", "compressed-tensors packs Linear layers only; written dequantized")
    if not grid.symmetric:
        return converted(
            "float16 tensor",
            "asymmetric pack-quantized does not load in transformers 5.24 with compressed-tensors 0.20 "
            "(packed zero points vs. the unpacked shape its loader builds; cf. llm-compressor#1618)",
        )
    size = dividing_group_size(grid.g_idx)
    if size is None:
        return converted(
            "float16 tensor",
            "groups do not tile the width (act-order g_idx; compressed-tensors 0.20 removed actorder=group)",
        )
    return exact(f"pack-quantized int{grid.bits} {_ct_strategy(size, grid)} {'sym' if grid.symmetric else 'asym'}")


def _ct_strategy(size: int, grid: IntegerGrid) -> str:
    return "channel" if size == grid.g_idx.numel() else f"group {size}"


def _why_not_gguf(grid: IntegerGrid) -> str:
    if block_groups(grid.g_idx, GGUF_BLOCK) is None:
        return "groups do not cover whole 32-column blocks (width, group size or act-order); written dequantized"
    return f"no GGML block type holds {grid.bits}-bit {'sym' if grid.symmetric else 'asym'} codes; written dequantized"
