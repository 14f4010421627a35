"""Which modules an exporter writes as one weight, and their float values.

An *export unit* is a module whose weight is one tensor of the target file: a layer
format with ``export_capability``, a structured-pruning wrapper (written as the
full-width layer it stands for), or a plain ``nn.Linear`` / ``nn.Embedding``. Units are
found outermost first, so the layer inside a wrapper is not a unit of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from paqbench.export.capability import FALLBACKS
from paqbench.layers.contract import CompressedLayer
from paqbench.layers.structured import InputSelect, OutputScatter


def is_unit(module: nn.Module) -> bool:
    return isinstance(module, (CompressedLayer, *FALLBACKS))


def export_units(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every export unit, outermost first."""
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if name and is_unit(module):
            inside.append(name)
            yield name, module


@torch.no_grad()
def dense_weight(module: nn.Module) -> torch.Tensor:
    """The float32 ``[out, in]`` weight a unit computes with: the contract's
    ``dequantized_weight()`` (removed channels of a structured-pruning wrapper are zero
    columns or rows; a tied head's is its table), or the weight of torch's own layers."""
    if isinstance(module, CompressedLayer):
        return module.dequantized_weight().float()
    return module.weight.detach().float()


@torch.no_grad()
def dense_bias(module: nn.Module) -> torch.Tensor | None:
    """The float32 bias a unit adds, full width, or None."""
    if isinstance(module, InputSelect):
        return dense_bias(module.layer)
    if isinstance(module, OutputScatter):
        inner = dense_bias(module.layer)
        if inner is None:
            return None
        return inner.new_zeros(module.out_features).index_copy_(0, module.index.to(inner.device), inner)
    bias = getattr(module, "bias", None)
    return None if bias is None else bias.detach().float()
