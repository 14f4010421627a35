"""paqbench's integer grid as compressed-tensors ``pack-quantized`` tensors.

compressed-tensors stores signed values ``q`` in ``[-2**(b-1), 2**(b-1))`` and
dequantizes ``(q - zero_point) * scale`` per group of ``group_size`` columns (every group
full: the size must divide the width). paqbench's ``(code - zero) * scale`` is the same
value with ``q = code - 2**(b-1)`` and ``zero_point = zero - 2**(b-1)``, which is 0 for a
symmetric grid (zero = mid code), so no zero point is stored then. Groups are re-cut to
the largest size that divides the width and stays inside paqbench's groups (SmolLM2's
576 columns at group 128: size 64, each scale written twice): the values are unchanged.
Packing is compressed-tensors' own ``pack_to_int32``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from compressed_tensors.quantization import QuantizationArgs

try:  # compressed-tensors >= 0.20 (what this was tested with)
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
except ImportError:  # older releases kept it beside the compressor
    from compressed_tensors.compressors.quantized_compressors.pack_quantized import pack_to_int32

from paqbench.export.grid import IntegerGrid, block_groups, dividing_group_size, per_block


@dataclass(frozen=True)
class Scheme:
    """One compressed-tensors weight scheme; layers with equal schemes share a config group."""

    bits: int
    symmetric: bool
    group_size: int | None  # None: one group per output channel
    format: str = "pack-quantized"

    @property
    def strategy(self) -> str:
        return "channel" if self.group_size is None else "group"

    def weight_args(self) -> QuantizationArgs:
        return QuantizationArgs(num_bits=self.bits, type="int", symmetric=self.symmetric, strategy=self.strategy,
                                group_size=self.group_size, dynamic=False)

    def input_args(self) -> QuantizationArgs | None:
        return None  # weight-only


def scheme_for(grid: IntegerGrid) -> Scheme | None:
    size = dividing_group_size(grid.g_idx)
    if size is None:
        return None
    return Scheme(grid.bits, grid.symmetric, None if size == grid.g_idx.numel() else size)


def packed_tensors(grid: IntegerGrid, scheme: Scheme) -> dict[str, torch.Tensor]:
    """``weight_packed``, ``weight_scale``, ``weight_shape`` (and ``weight_zero_point`` for an
    asymmetric grid) of one layer, as compressed-tensors' compressor would write them."""
    out, width = grid.codes.shape
    groups = block_groups(grid.g_idx, scheme.group_size or width)
    if groups is None:
        raise ValueError("the scheme's group size does not fit the layer's groups")
    mid = grid.mid
    signed = (grid.codes.to(torch.int16) - mid).to(torch.int8)
    tensors = {
        "weight_packed": pack_to_int32(signed, grid.bits),
        "weight_scale": per_block(grid.scales, groups).to(torch.float16).contiguous(),
        "weight_shape": torch.tensor([out, width]),
    }
    if not scheme.symmetric:
        zero = (per_block(grid.zeros, groups).to(torch.int16) - mid).to(torch.int8)
        tensors["weight_zero_point"] = pack_to_int32(zero, grid.bits, packed_dim=0).contiguous()
    return tensors


def vllm_note(scheme: Scheme, original_group: int, width: int) -> str | None:
    """Why vLLM's kernels may not take a layer (from vLLM's documented limits: 4/8-bit,
    group size 32/64/128 or per channel); None when nothing is known against it."""
    if original_group > 0 and width % original_group:
        return (f"short last group ({width} columns at group {original_group}): not vLLM-compatible as quantized; "
                f"written at group {scheme.group_size} with repeated scales")
    if scheme.bits not in (4, 8):
        return f"{scheme.bits}-bit weights: vLLM's kernels take 4 and 8 bits"
    if scheme.group_size not in (None, 32, 64, 128):
        return f"group size {scheme.group_size}: vLLM's kernels take 32, 64, 128 or per channel"
    return None
