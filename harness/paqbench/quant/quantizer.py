"""Uniform min-max quantization grids: scales and zero points, per channel or per group.

Conventions shared by every quantization method in paqbench (and by
:class:`paqbench.quant.linear.QuantizedLinear`):

- A weight ``w`` in output row ``o`` and input column ``i`` has code ``c`` in
  ``[0, 2**bits - 1]`` and dequantizes to ``(c - zero[o, g]) * scale[o, g]`` with
  ``g = g_idx[i]``.
- The grid of every group contains 0.0 exactly (its range is widened to include 0 and
  the zero point is an integer code), so pruned weights can be stored as the zero code
  and dequantize to exactly 0.0: this is what lets pruning and quantization compose in
  any order.
- Asymmetric: ``scale = (max - min) / maxq``, ``zero = round(-min / scale)``; every weight
  is at most half a step from its grid point. Scales are stored as float16, rounded *up*
  so the grid still spans the whole range.
- Symmetric: ``zero = 2**(bits-1)`` (the mid code, so values are ``k * scale`` with ``k`` in
  ``[-2**(bits-1), 2**(bits-1) - 1]``) and ``scale = m / -2**(bits-1)`` where ``m`` is the
  group's weight of largest magnitude *with its sign* (llama.cpp's Q4_0 rule,
  ``d = max / -8``): that weight lands exactly on the extra negative code, the step is
  ``max|w| / 2**(bits-1)``, and the scale is negative when ``m`` is positive. The scale is
  stored as float16 rounded to nearest (as llama.cpp stores ``d``). A weight on the other
  side beyond ``(2**(bits-1) - 1) * |scale|`` clips to it (at most one step of error);
  all others are within half a step. At 4 bits this cut the relative weight MSE of the
  embedded SmolLM2's decoder Linears by 14-23% against the previous ``2 * max|w| / maxq``
  (GPTQ reference code; llm-compressor's ``max|w| / 7.5``), and the GGUF Q4_0 export now
  holds what llama.cpp's own quantizer would write (docs/methods.md, rtn).
- Groups are contiguous runs of ``group_size`` input columns, the last one shorter when
  ``group_size`` does not divide the width (576 columns at group size 128 = 4 groups of
  128 and one of 64); ``group_size = -1`` is one group per output channel. ``g_idx``
  records each column's group, so permuted (act-order) or sliced layouts stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from paqbench.layers import get_mask

#: Storage dtype of scales.
SCALE_DTYPE = torch.float16
#: Smallest positive float16 (a subnormal); scales never round to zero.
_MIN_SCALE = 2.0**-24


@dataclass(frozen=True)
class QuantConfig:
    """How a weight matrix is quantized."""

    bits: int = 4
    group_size: int = 128
    symmetric: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise ValueError(f"bits must be between 1 and 8, got {self.bits}")
        if self.group_size != -1 and self.group_size < 1:
            raise ValueError(f"group_size must be positive or -1 (per channel), got {self.group_size}")

    @property
    def maxq(self) -> int:
        """The largest code."""
        return (1 << self.bits) - 1

    def n_groups(self, in_features: int) -> int:
        """Groups along an input width of ``in_features`` (the last may be shorter)."""
        if self.group_size == -1:
            return 1
        return -(-in_features // self.group_size)

    def group_index(self, in_features: int, device: torch.device | None = None) -> torch.Tensor:
        """``g_idx`` of contiguous groups: column ``i`` is in group ``i // group_size``."""
        columns = torch.arange(in_features, device=device, dtype=torch.int32)
        if self.group_size == -1:
            return torch.zeros_like(columns)
        return columns // self.group_size


@dataclass
class QuantizedWeight:
    """A quantized weight matrix before it is packed into a layer.

    ``codes`` uint8 ``[out, in]``, ``scales`` float16 ``[out, G]``, ``zeros`` uint8
    ``[out, G]`` (codes domain), ``g_idx`` int32 ``[in]``.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    config: QuantConfig

    @classmethod
    def from_solver(
        cls, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor, config: QuantConfig
    ) -> QuantizedWeight:
        """The stored form of a column-by-column solver's working tensors (GPTQ,
        SparseGPT): contiguous codes, scales in the storage dtype, uint8 zeros, int32 index."""
        return cls(codes=codes.contiguous(), scales=scales.to(SCALE_DTYPE), zeros=zeros.to(torch.uint8),
                   g_idx=g_idx.to(torch.int32).contiguous(), config=config)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight the codes stand for."""
        return dequantize(self.codes, self.scales, self.zeros, self.g_idx)


def dequantize(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor
) -> torch.Tensor:
    """``(codes - zeros[:, g_idx]) * scales[:, g_idx]`` in float32."""
    index = g_idx.to(device=codes.device, dtype=torch.long)
    zero = zeros.float().index_select(1, index)
    scale = scales.float().index_select(1, index)
    return (codes.float() - zero) * scale


def minmax_params(
    minimum: torch.Tensor, maximum: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32 holding float16-representable values) and zero point (float32
    holding integer codes) of the grid covering ``[minimum, maximum] ∪ {0}`` (symmetric:
    llama.cpp's Q4_0 rule, whose short side may clip; see the module docstring)."""
    maxq = (1 << bits) - 1
    lo = torch.clamp(minimum.float(), max=0.0)
    hi = torch.clamp(maximum.float(), min=0.0)
    if symmetric:
        return _symmetric_params(lo, hi, bits)
    empty = (lo == 0) & (hi == 0)
    lo = torch.where(empty, torch.full_like(lo, -1.0), lo)
    hi = torch.where(empty, torch.full_like(hi, 1.0), hi)
    scale = _round_up_to_storage((hi - lo) / maxq)
    zero = torch.round(-lo / scale).clamp(0, maxq)  # the code of 0.0 on the grid starting at lo
    return scale, zero


def _symmetric_params(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """llama.cpp's Q4_0 rule for any width: ``scale = m / -mid`` with ``m`` the signed
    value of largest magnitude (a tie takes the negative one: a positive scale), rounded to
    the nearest float16 of magnitude >= 2**-24; an all-zero group gets ``1 / mid``."""
    mid = float(1 << (bits - 1))
    signed = torch.where(-lo >= hi, lo, hi)
    signed = torch.where(signed == 0, torch.full_like(signed, -1.0), signed)
    scale = (signed / -mid).to(SCALE_DTYPE).float()
    tiny = scale.abs() < _MIN_SCALE
    scale = torch.where(tiny, torch.copysign(torch.full_like(scale, _MIN_SCALE), scale), scale)
    return scale, torch.full_like(scale, mid)


def _round_up_to_storage(scale: torch.Tensor) -> torch.Tensor:
    """The smallest stored-precision value >= ``scale`` (and > 0), as float32: rounding
    up keeps the whole range on the grid, so the half-step bound survives storage."""
    stored = scale.clamp(min=_MIN_SCALE).to(SCALE_DTYPE)
    below = stored.float() < scale
    stored = torch.where(below, torch.nextafter(stored, torch.full_like(stored, float("inf"))), stored)
    return stored.float()


def quantize_codes(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Round-to-nearest codes (float32 holding integers) of ``weight`` on the grid
    ``(scale, zero)``, which broadcast against it."""
    return torch.clamp(torch.round(weight / scale) + zero, 0, maxq)


def group_params(
    weight: torch.Tensor, g_idx: torch.Tensor, n_groups: int, config: QuantConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max ``(scale, zero)``, each ``[out, n_groups]`` float32, of the groups that
    ``g_idx`` assigns the columns of ``weight`` to (any assignment, not only contiguous)."""
    weight = weight.float()
    index = g_idx.to(device=weight.device, dtype=torch.long).unsqueeze(0).expand_as(weight)
    shape = (weight.shape[0], n_groups)
    lo = torch.zeros(shape, device=weight.device).scatter_reduce(1, index, weight, "amin", include_self=True)
    hi = torch.zeros(shape, device=weight.device).scatter_reduce(1, index, weight, "amax", include_self=True)
    return minmax_params(lo, hi, config.bits, config.symmetric)


@torch.no_grad()
def quantize_rtn(
    weight: torch.Tensor, config: QuantConfig, keep: torch.Tensor | None = None
) -> QuantizedWeight:
    """Round-to-nearest min-max quantization of ``weight`` ``[out, in]``.

    Where ``keep`` is False the code is set to the zero point, so those weights
    dequantize to exactly 0.0 (prune-then-quantize keeps its zeros).
    """
    weight = weight.detach().float()
    if keep is not None:
        keep = keep.to(device=weight.device, dtype=torch.bool)
        weight = weight * keep
    in_features = weight.shape[1]
    g_idx = config.group_index(in_features, weight.device)
    n_groups = config.n_groups(in_features)
    scale, zero = group_params(weight, g_idx, n_groups, config)
    index = g_idx.long()
    codes = quantize_codes(weight, scale[:, index], zero[:, index], config.maxq)
    if keep is not None:
        codes = torch.where(keep, codes, zero[:, index])
    return QuantizedWeight(
        codes=codes.to(torch.uint8),
        scales=scale.to(SCALE_DTYPE),
        zeros=zero.to(torch.uint8),
        g_idx=g_idx,
        config=config,
    )


def keep_mask(module: nn.Module) -> torch.Tensor | None:
    """The weights of a Linear that must stay exactly zero after quantization, as a keep
    mask: its recorded pruning mask, or else its exact zeros; None when there are none."""
    mask = get_mask(module)
    if mask is not None:
        return mask.to(torch.bool)
    weight = module.weight.detach()
    nonzero = weight != 0
    if bool(nonzero.all()):
        return None
    return nonzero
