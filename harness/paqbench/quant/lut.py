"""Non-uniform scalar quantization with learned lookup tables (k-means LUTs).

Each output channel (``granularity: channel``) or each (channel, group of
``group_size`` input columns) gets its own table of ``2**bits`` float16 values, fitted
by (weighted) Lloyd iterations on its weights, as in SqueezeLLM (Kim et al. 2023); each
weight stores the ``bits``-bit index of its nearest entry.

``W[o, i] = lut[o, g_idx[i], code[o, i]]``

Exact zeros: one entry of every table is pinned to exactly 0.0 and never moves. It costs
one of the ``2**bits`` levels and no bits, and it is what makes prune-then-quantize and
quantize-then-prune exact: pruned weights take the zero entry, and ``zero_weights``
just rewrites codes. Lloyd iterations start twice: from the RTN min-max grid of the same group (widened to
hold 0, whose grid point becomes the pinned entry; before any iteration the error is
RTN's, up to float16 rounding of the entries, and iterations only lower it) and from the
weighted quantiles of the group's weights (which escapes the uniform start's local
optima, e.g. levels no heavily weighted weight ever reaches); each table keeps the fit
with the lower weighted squared error, so RTN's error stays an upper bound.

Layout (persistent buffers):

==========  =======  ===================================================================
qweight     uint8    ``[out, ceil(in * bits / 8)]`` codes packed along the input dim
lut         float16  ``[out, G, 2**bits]`` the tables, ascending along the last dim
g_idx       int32    ``[in]`` the group of each input column (authority after slicing)
lut_meta    int32    ``[bits, group_size, in_features, out_features]`` (group_size -1: per channel)
==========  =======  ===================================================================

Storage: ``bits + 16 * 2**bits / group_size`` bits per weight (per channel:
``group_size = in``), plus ``32 / out`` for ``g_idx``. At 4 bits per channel on a 576-wide
layer: 4 + 256/576 = 4.44; at group 128: 4 + 2 = 6, which is why per channel is the default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from paqbench.layers.sparsity import get_mask, record_mask
from paqbench.quant.codebook import CodebookLinear, lloyd_1d, nearest_sorted
from paqbench.quant.grouped import GroupedCodes
from paqbench.quant.packing import pack
from paqbench.quant.quantizer import QuantConfig, group_params, keep_mask

TABLE_DTYPE = torch.float16


class LUTLinear(GroupedCodes, CodebookLinear):
    """A linear layer stored as codes into per-channel or per-group lookup tables."""

    name = "lut"
    description = "k-means lookup tables: codes index 2**bits fp16 values per channel or group."
    state_marker = "lut_meta"
    meta_fields = ("bits", "group_size", "in_features", "out_features")  # group_size -1: per channel
    format_floats = ("lut",)
    repr_fields = ("in_features", "out_features", "bits", "group_size")

    def _register_groups(self, config: QuantConfig, groups: int, device: torch.device | str | None) -> None:
        """Tables zero (the constructor is :class:`GroupedCodes`'s: ``LUTLinear(in_features,
        out_features, QuantConfig(bits, group_size), n_groups=None, **options)``)."""
        table = torch.zeros(self.out_features, groups, 1 << config.bits, dtype=TABLE_DTYPE, device=device)
        self.register_buffer("lut", table)
        self.register_buffer("g_idx", config.group_index(self.in_features, device=device).clamp_max(groups - 1))

    # ------------------------------------------------------------------ building

    @classmethod
    @torch.no_grad()
    def from_weight(
        cls,
        weight: torch.Tensor,
        bits: int,
        group_size: int = -1,
        *,
        bias: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        importance: torch.Tensor | None = None,
        iterations: int = 20,
        mask: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
        on_iteration: Callable[[int, torch.Tensor], None] | None = None,
    ) -> LUTLinear:
        """Fit the tables of ``weight`` ``[out, in]`` and encode it.

        ``keep`` False: the weight takes the zero entry (exactly 0.0) and pulls no entry.
        ``importance`` ``[in]`` (e.g. ``E[x^2]`` of each input column) weighs each
        weight's squared error in the fit; None weighs all equally. ``on_iteration(i,
        centers)`` sees the ``[out * G, 2**bits]`` float32 centers after each iteration.
        """
        weight = weight.detach().float()
        out_features, in_features = weight.shape
        device = weight.device
        config = QuantConfig(bits=bits, group_size=group_size)
        if keep is not None:
            keep = keep.to(device=device, dtype=torch.bool)
            weight = weight * keep
        layer = cls(in_features, out_features, config, **cls._options_for(weight, bias, dtype))
        groups = config.n_groups(in_features)
        width = in_features if group_size == -1 else group_size
        scale, zero = group_params(weight, layer.g_idx, groups, config)  # RTN grid: the start
        levels = torch.arange(1 << bits, device=device, dtype=torch.float32)
        centers = ((levels - zero.unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(-1, 1 << bits)
        fixed = (levels == zero.unsqueeze(-1)).reshape(-1, 1 << bits)

        point_weight = torch.ones_like(weight) if importance is None else (
            importance.to(device=device, dtype=torch.float32).clamp_min(0).unsqueeze(0).expand_as(weight)
        )
        if importance is not None:  # a column no token reached still counts a little
            point_weight = point_weight + 1e-6 * point_weight.mean().clamp_min(1e-30)
        if keep is not None:
            point_weight = point_weight * keep
        values = _grouped(weight, groups, width)
        weights = _grouped(point_weight, groups, width)  # padding gets weight 0
        centers, codes = lloyd_1d(values, weights, centers, fixed, iterations, on_iteration)
        if iterations > 0:
            # A second start at the weighted quantiles escapes the local optima of the
            # uniform start (levels stuck where no heavy point reaches them); each table
            # keeps whichever fit has the lower weighted error, so RTN remains the bound.
            start, pinned = _quantile_start(values, weights, 1 << bits)
            other, other_codes = lloyd_1d(values, weights, start, pinned, iterations)
            better = _weighted_sse(values, weights, other, other_codes) < _weighted_sse(values, weights, centers, codes)
            centers = torch.where(better.unsqueeze(1), other, centers)

        table = centers.to(TABLE_DTYPE)
        # the pinned entry: sorted position of the (only) fixed center, exactly 0.0
        codes = nearest_sorted(values, table.float())
        codes = _ungrouped(codes, out_features, in_features)
        if keep is not None:
            zero_code = _zero_codes(table.view(out_features, groups, -1))
            codes = torch.where(keep, codes, zero_code.gather(1, layer.g_idx.long().expand(out_features, -1)))
        layer.lut = table.view(out_features, groups, -1).contiguous()
        layer.qweight = pack(codes.to(torch.uint8), bits)
        layer._carry_over(bias, mask)
        return layer

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, bits: int, group_size: int = -1, *, importance: torch.Tensor | None = None,
        iterations: int = 20,
    ) -> LUTLinear:
        """Fit ``linear``; its recorded mask or exact zeros stay exactly zero."""
        return cls.from_weight(
            linear.weight, bits, group_size, bias=linear.bias, keep=keep_mask(linear), importance=importance,
            iterations=iterations, mask=get_mask(linear), dtype=linear.weight.dtype,
        )

    # ------------------------------------------------------------------ reading

    @property
    def n_groups(self) -> int:
        return self.lut.shape[1]

    def dequantize(self) -> torch.Tensor:
        """The float32 weight: ``lut[o, g_idx[i], code[o, i]]``."""
        k = self.lut.shape[2]
        flat = self.lut.float().reshape(self.out_features, -1)
        index = self.g_idx.long().unsqueeze(0) * k + self.unpack_codes().long()
        return flat.gather(1, index)

    # ------------------------------------------------------------------ editing (pruning)

    @torch.no_grad()
    def zero_weights(self, keep: torch.Tensor) -> None:
        """Unstructured pruning: where ``keep`` is False the code becomes its table's zero
        entry, so the weight is exactly 0.0; the mask is recorded."""
        keep = self._combined_keep(keep)
        zero_code = _zero_codes(self.lut).gather(1, self.g_idx.long().expand(self.out_features, -1))
        self.qweight = pack(torch.where(keep, self.unpack_codes(), zero_code.to(torch.uint8)), self.bits)
        record_mask(self, keep)
        self._invalidate()

    @torch.no_grad()
    def select_input_features(self, index: torch.Tensor) -> None:
        """Keep the input columns ``index`` (in that order); tables of groups no column
        uses any more are dropped."""
        index, _ = self._slice_code_columns(index, lut=1)
        self._finish_slice(index, "input")

    @torch.no_grad()
    def select_output_features(self, index: torch.Tensor) -> None:
        """Keep the output rows ``index`` (in that order), with their tables and bias."""
        self._select_rows(index, ("qweight", "lut"))

    # ------------------------------------------------------------------ loading

    @classmethod
    def empty_from_state(cls, state_dict: Mapping[str, torch.Tensor], name: str, device: torch.device) -> LUTLinear:
        """An empty layer of the layout saved under ``name``."""
        bits, group_size, in_features, out_features = cls._saved_meta(state_dict, name)
        return cls(in_features, out_features, QuantConfig(bits, group_size),
                   n_groups=state_dict[f"{name}.lut"].shape[1], device=device, **cls._saved_bias(state_dict, name))


def _weighted_sse(
    values: torch.Tensor, weights: torch.Tensor, centers: torch.Tensor, codes: torch.Tensor
) -> torch.Tensor:
    return (weights * (values - centers.gather(1, codes)).pow(2)).sum(dim=1)


def _quantile_start(values: torch.Tensor, weights: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centers at the weighted ``(j + 0.5) / (k - 1)`` quantiles of each row's values,
    plus a pinned 0.0: ``(centers [B, k], fixed [B, k])``."""
    ordered, order = torch.sort(values, dim=1)
    cumulative = torch.cumsum(weights.gather(1, order), dim=1)
    total = cumulative[:, -1:].clamp_min(1e-30)
    targets = (torch.arange(k - 1, device=values.device, dtype=torch.float32) + 0.5) / (k - 1) * total
    position = torch.searchsorted(cumulative.contiguous(), targets.contiguous()).clamp_max(values.shape[1] - 1)
    centers = torch.cat([ordered.gather(1, position), torch.zeros_like(total)], dim=1)
    fixed = torch.zeros_like(centers, dtype=torch.bool)
    fixed[:, -1] = True
    return centers, fixed


def _grouped(matrix: torch.Tensor, groups: int, width: int) -> torch.Tensor:
    """``[out, in]`` -> ``[out * groups, width]`` of contiguous groups, the last one
    zero-padded (padding must carry weight 0)."""
    out_features, in_features = matrix.shape
    padded = torch.zeros(out_features, groups * width, dtype=matrix.dtype, device=matrix.device)
    padded[:, :in_features] = matrix
    return padded.view(out_features * groups, width)


def _ungrouped(matrix: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    return matrix.reshape(out_features, -1)[:, :in_features]


def _zero_codes(lut: torch.Tensor) -> torch.Tensor:
    """The index of the exact 0.0 entry of each table, ``[out, G]``."""
    is_zero = lut == 0
    if not bool(is_zero.any(dim=-1).all()):
        raise ValueError("a lookup table has no exact 0.0 entry, so its weights cannot be zeroed exactly")
    return is_zero.to(torch.uint8).argmax(dim=-1)

