"""Formats whose weight is ``bits``-bit codes packed along the input dim, grouped by ``g_idx``.

:class:`QuantizedLinear` (scales and zero points per group), :class:`LUTLinear` (a table
per group) and :class:`NF4Linear` (an absmax per block) store the same two things: a
uint8 ``qweight`` ``[out, ceil(in * bits / 8)]`` (each row packed on its own, so output
slicing needs no repacking) and ``g_idx`` ``[in]``, the group of each input column (the
authority after act-order or slicing). Their layout is a :class:`QuantConfig` (bits and
group size) plus the number of groups, so the constructor, reading the codes and
slicing input columns are one piece of code, here; each format adds its per-group
tables (:meth:`GroupedCodes._register_groups`).
"""

from __future__ import annotations

from typing import Unpack

import torch

from paqbench.layers.contract import CompressedLayer, LayerOptions
from paqbench.quant.packing import pack, packed_length, unpack
from paqbench.quant.quantizer import QuantConfig


class GroupedCodes(CompressedLayer):
    """Base of the packed, ``g_idx``-grouped code formats (see the module docstring)."""

    bits: int
    qweight: torch.Tensor
    g_idx: torch.Tensor

    def __init__(
        self, in_features: int, out_features: int, config: QuantConfig, *, n_groups: int | None = None,
        **options: Unpack[LayerOptions],
    ) -> None:
        """An empty layer of the layout (codes zero, tables from :meth:`_register_groups`),
        ready for ``load_state_dict``; ``n_groups`` is the saved count (groups dropped by
        slicing), else ``config``'s for ``in_features``. ``from_*`` build filled ones."""
        super().__init__()
        device = options.get("device")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = config.bits, config.group_size
        self.register_buffer("qweight", torch.zeros(out_features, packed_length(in_features, config.bits),
                                                    dtype=torch.uint8, device=device))
        groups = n_groups if n_groups is not None else config.n_groups(in_features)
        self._register_groups(config, groups, device)
        self._init_layout(**options)

    def _register_groups(self, config: QuantConfig, groups: int, device: torch.device | str | None) -> None:
        """Register the format's per-group buffers and ``g_idx`` (called by the constructor)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _register_groups()")

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
