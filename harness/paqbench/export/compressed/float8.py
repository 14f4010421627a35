"""paqbench's E4M3 layers as compressed-tensors ``float-quantized`` tensors.

compressed-tensors stores an FP8 weight as the ``float8_e4m3fn`` tensor itself
(``weight``) with its ``weight_scale`` (one per output channel, or one per tensor) and
dequantizes ``weight * weight_scale``: :class:`~paqbench.quant.fp8.FP8Linear`'s own
bytes and scales, copied. Dynamic E4M3 activations (per token or per tensor) are a
``dynamic`` input-activation scheme that the loader applies at run time, as paqbench
does; weight-only layers have none. The values are exactly paqbench's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from compressed_tensors.quantization import QuantizationArgs
from torch import nn

FORMAT = "float-quantized"
_STRATEGY = {"per-token": "token", "per-tensor": "tensor"}


@dataclass(frozen=True)
class FP8Scheme:
    """One FP8 weight scheme (and its activation scheme); equal schemes share a config group."""

    per_channel: bool
    activations: str  # none | per-token | per-tensor (paqbench.quant.fp8.ACTIVATIONS)
    format: str = FORMAT

    def weight_args(self) -> QuantizationArgs:
        return QuantizationArgs(num_bits=8, type="float", symmetric=True, dynamic=False,
                                strategy="channel" if self.per_channel else "tensor")

    def input_args(self) -> QuantizationArgs | None:
        if self.activations == "none":
            return None
        return QuantizationArgs(num_bits=8, type="float", symmetric=True, dynamic=True,
                                strategy=_STRATEGY[self.activations])


def fp8_scheme(module: nn.Module) -> FP8Scheme | None:
    """The scheme of an FP8 layer (anything with ``weight_fp8`` and ``weight_scale``), else None."""
    weight = getattr(module, "weight_fp8", None)
    if not isinstance(weight, torch.Tensor) or weight.dtype != torch.float8_e4m3fn:
        return None
    return FP8Scheme(per_channel=bool(module.per_channel), activations=str(module.activations))


def fp8_tensors(module: nn.Module, scheme: FP8Scheme) -> dict[str, torch.Tensor]:
    """``weight`` (E4M3 bytes) and ``weight_scale`` (``[out, 1]`` per channel, ``[1]`` per tensor)."""
    scale = module.weight_scale.detach().float()
    return {
        "weight": module.weight_fp8.detach().clone(),
        "weight_scale": scale.reshape(-1, 1).clone() if scheme.per_channel else scale.reshape(1).clone(),
    }
