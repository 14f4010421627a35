"""Formats whose weight is ``bits``-bit codes packed along the input dim, grouped by ``g_idx``.

:class:`QuantizedLinear` (scales and zero points per group), :class:`LUTLinear` (a table
per group) and :class:`NF4Linear` (an absmax per block) store the same two things: a
uint8 ``qweight`` ``[out, ceil(in * bits / 8)]`` (each row packed on its own, so output
slicing needs no repacking) and ``g_idx`` ``[in]``, the group of each input column (the
authority after act-order or slicing). Reading the codes and slicing input columns are
therefore one piece of code, here; each format adds its per-group tables.
"""

from __future__ import annotations

import torch

from paqbench.layers.contract import CompressedLayer
from paqbench.quant.packing import pack, unpack


class GroupedCodes(CompressedLayer):
    """Base of the packed, ``g_idx``-grouped code formats (see the module docstring)."""

    bits: int
    qweight: torch.Tensor
    g_idx: torch.Tensor

    def unpack_codes(self) -> torch.Tensor:
        """The codes, uint8 ``[out, in]``."""
        return unpack(self.qweight, self.bits, self.in_features)

    def _slice_code_columns(self, index: torch.Tensor, **group_tables: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the input columns ``index`` (in that order) of the codes (unpacked, sliced,
        repacked) and of ``g_idx``; groups no kept column uses are dropped from
        ``group_tables`` (buffer name -> its group dim, see :meth:`_compact`). Returns the
        checked index and the kept groups; the caller slices any packed table with them,
        then calls ``_finish_slice(index, "input")``."""
        index = self._check_index(index, "input")
        codes = self.unpack_codes().index_select(1, index)
        self.g_idx = self.g_idx.index_select(0, index)
        used = self._compact("g_idx", **group_tables)
        self.qweight = pack(codes, self.bits)
        return index, used
