"""A complete third-party layer format: int8 codes with one float16 scale per output row.

This module is what docs/formats.md walks through. It is a paqbench plugin on its own
(register it with an entry point in the ``paqbench`` group, or ``pm.register(module)``),
and it passes :func:`paqbench.testing.check_layer_format` (tests/test_layer_contract.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from paqbench import CompressedLayer, hookimpl
from paqbench.export.capability import Capability, check_target, converted
from paqbench.layers.contract import SLICE_INPUTS, SLICE_OUTPUTS, ZERO_WEIGHTS
from paqbench.layers.sparsity import get_mask, record_mask


class Int8RowLinear(CompressedLayer):
    """A linear layer stored as int8 codes times a float16 scale per output row."""

    name = "int8-row"
    description = "int8 weights, one float16 scale per output row (example third-party format)."
    paqbench_layer_kind = "quantized"  # what methods `accept`
    capabilities = frozenset({ZERO_WEIGHTS, SLICE_INPUTS, SLICE_OUTPUTS})
    state_marker = "int8row_meta"  # <layer>.int8row_meta in a checkpoint marks this format

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(out_features, dtype=torch.float16, device=device))
        self.register_buffer(self.state_marker, torch.zeros(2, dtype=torch.int32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None
        self._write_meta()

    def _write_meta(self) -> None:
        meta = torch.tensor([self.in_features, self.out_features], dtype=torch.int32, device=self.codes.device)
        setattr(self, self.state_marker, meta)  # the layout, so a checkpoint can be rebuilt

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> Int8RowLinear:
        """Round-to-nearest per row; exact zeros (a pruned weight) stay zero, the mask too."""
        weight = linear.weight.detach().float()
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=weight.device)
        scale = (weight.abs().amax(dim=1) / 127).clamp_min(1e-8).to(torch.float16)
        layer.scale = scale
        layer.codes = torch.round(weight / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone())
        if get_mask(linear) is not None:
            record_mask(layer, get_mask(linear).clone())
        return layer

    # the contract: the weight it stands for, and the forward (reference only here)
    def dequantize(self) -> torch.Tensor:
        return self.codes.float() * self.scale.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantize().to(x.dtype), bias)

    def export_capability(self, target: str) -> Capability:
        check_target(target)
        return converted("F16" if target == "gguf" else "float16 tensor", "int8-row has no export type; dequantized")

    # the edits it declares in `capabilities`
    @torch.no_grad()
    def zero_weights(self, keep: torch.Tensor) -> None:
        keep = self._combined_keep(keep)  # shape-checked, ANDed with the recorded mask
        self.codes = torch.where(keep, self.codes, torch.zeros_like(self.codes))
        record_mask(self, keep)

    @torch.no_grad()
    def select_input_features(self, index: torch.Tensor) -> None:
        index = self._check_index(index, "input")
        self.codes = self.codes.index_select(1, index).contiguous()
        self.in_features = int(index.numel())
        self._slice_mask(index, "input")
        self._write_meta()

    @torch.no_grad()
    def select_output_features(self, index: torch.Tensor) -> None:
        index = self._check_index(index, "output")
        self.codes = self.codes.index_select(0, index).contiguous()
        self.scale = self.scale.index_select(0, index).contiguous()
        self._slice_bias(index)
        self.out_features = int(index.numel())
        self._slice_mask(index, "output")
        self._write_meta()

    # loading: an empty layer of the saved layout, which load_state_dict fills
    @classmethod
    def empty_from_state(cls, state_dict: Mapping[str, torch.Tensor], name: str,
                         device: torch.device) -> Int8RowLinear:
        in_features, out_features = (int(v) for v in state_dict[f"{name}.{cls.state_marker}"].tolist())
        bias = state_dict.get(f"{name}.bias")
        return cls(in_features, out_features, bias=bias is not None, device=device,
                   dtype=bias.dtype if bias is not None else torch.float32)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.in_features, self.out_features = (int(v) for v in getattr(self, self.state_marker).tolist())


@hookimpl
def paqbench_register_layer_formats(register: Callable[[type[CompressedLayer]], None]) -> None:
    register(Int8RowLinear)
