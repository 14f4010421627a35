"""A complete third-party layer format: int8 codes with one float16 scale per output row.

This module is what docs/formats.md walks through. It is a paqbench plugin on its own
(register it with an entry point in the ``paqbench`` group, or ``pm.register(module)``),
and it passes :func:`paqbench.testing.check_layer_format` (tests/test_layer_contract.py).
Everything but the layout comes from :class:`paqbench.CompressedLayer`: the reference
forward, slicing with bias and mask, the layout marker, save/load and the accounting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Unpack

import torch
from torch import nn

from paqbench import CompressedLayer, hookimpl
from paqbench.export.capability import Capability, check_target, converted
from paqbench.layers.contract import SLICE_INPUTS, SLICE_OUTPUTS, ZERO_WEIGHTS, LayerOptions
from paqbench.layers.sparsity import get_mask, record_mask


class Int8RowLinear(CompressedLayer):
    """A linear layer stored as int8 codes times a float16 scale per output row."""

    name = "int8-row"
    description = "int8 weights, one float16 scale per output row (example third-party format)."
    paqbench_layer_kind = "quantized"  # what methods `accept`
    capabilities = frozenset({ZERO_WEIGHTS, SLICE_INPUTS, SLICE_OUTPUTS})
    state_marker = "int8row_meta"  # <layer>.int8row_meta in a checkpoint marks this format
    meta_fields = ("in_features", "out_features")  # the layout that marker holds

    def __init__(self, in_features: int, out_features: int, **options: Unpack[LayerOptions]) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        device = options.get("device")
        self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(out_features, dtype=torch.float16, device=device))
        self._init_layout(**options)  # the marker buffer, then the bias

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> Int8RowLinear:
        """Round-to-nearest per row; exact zeros (a pruned weight) stay zero, the mask too."""
        weight = linear.weight.detach().float()
        layer = cls._empty_like(linear)  # its shape, bias, device and dtype
        layer.scale = (weight.abs().amax(dim=1) / 127).clamp_min(1e-8).to(torch.float16)
        layer.codes = torch.round(weight / layer.scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
        layer._carry_over(linear.bias, get_mask(linear))
        return layer

    # the contract: the weight it stands for (the forward defaults to the float op on it)
    def dequantize(self) -> torch.Tensor:
        return self.codes.float() * self.scale.float()[:, None]

    def export_capability(self, target: str) -> Capability:
        check_target(target)
        return converted("F16" if target == "gguf" else "float16 tensor", "int8-row has no export type; dequantized")

    # the edits it declares in `capabilities`
    @torch.no_grad()
    def zero_weights(self, keep: torch.Tensor) -> None:
        keep = self._combined_keep(keep)  # shape-checked, ANDed with the recorded mask
        self.codes = torch.where(keep, self.codes, torch.zeros_like(self.codes))
        record_mask(self, keep)

    def select_input_features(self, index: torch.Tensor) -> None:
        self._select_columns(index, ("codes",))  # + in_features, mask, marker

    def select_output_features(self, index: torch.Tensor) -> None:
        self._select_rows(index, ("codes", "scale"))  # + out_features, bias, mask, marker

    # loading: an empty layer of the saved layout, which load_state_dict fills
    @classmethod
    def empty_from_state(cls, state_dict: Mapping[str, torch.Tensor], name: str,
                         device: torch.device) -> Int8RowLinear:
        in_features, out_features = cls._saved_meta(state_dict, name)
        return cls(in_features, out_features, device=device, **cls._saved_bias(state_dict, name))


@hookimpl
def paqbench_register_layer_formats(register: Callable[[type[CompressedLayer]], None]) -> None:
    register(Int8RowLinear)
