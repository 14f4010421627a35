"""Convert a peer's quantized tensors into paqbench's layer formats, checked bitwise.

Every conversion is compared with the peer's own dequantized weight: ``exact`` means the
paqbench layer's weight equals the peer's bit for bit (both in float32). Anything else is
recorded with its largest difference and the reason (float32 scales stored as float16,
activations quantized on a different range, float zero points held as dense weights), so
nothing is measured on a silently different model; a step with ``require_exact`` refuses
such a conversion instead.

Formats:

- ``packed``: integer codes with integer zero points -> :class:`~paqbench.quant.linear.QuantizedLinear`
  (``code = q - qmin``, ``zero = zero_point - qmin``, scales float16).
- ``int8-dynamic``: int8 weights, float32 row scales, int8 per-token activations ->
  :class:`~paqbench.quant.w8a8.Int8DynamicLinear`.
- ``dense``: the peer's dequantized weight in a plain ``nn.Linear`` (schemes paqbench's
  packed formats cannot hold: float zero points); quality is the peer's, storage and speed
  are the dense model's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from paqbench.layers.sparsity import MASK_BUFFER, get_mask
from paqbench.quant.linear import QuantizedLinear, replace_module
from paqbench.quant.quantizer import SCALE_DTYPE, QuantConfig, QuantizedWeight
from paqbench.quant.w8a8 import Int8DynamicLinear

Format = Literal["packed", "int8-dynamic", "dense"]


class ConversionError(ValueError):
    """The peer's result cannot be held by any paqbench format, or not exactly when asked to."""


@dataclass
class LayerConversion:
    """How one layer went in: its format, whether it is bitwise the peer's, and why not."""

    name: str
    format: Format
    exact: bool
    max_abs_diff: float
    note: str = ""


@dataclass
class ConversionRecord:
    """Every layer's conversion; ``to_dict`` is what the step's record shows."""

    layers: list[LayerConversion] = field(default_factory=list)

    def add(self, conversion: LayerConversion) -> None:
        self.layers.append(conversion)

    @property
    def exact(self) -> bool:
        return all(layer.exact for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        inexact = [layer for layer in self.layers if not layer.exact]
        notes = sorted({layer.note for layer in self.layers if layer.note})
        return {
            "layers": len(self.layers),
            "formats": dict(Counter(layer.format for layer in self.layers)),
            "exact": self.exact,
            "inexact_layers": len(inexact),
            "max_abs_weight_diff": max((layer.max_abs_diff for layer in self.layers), default=0.0),
            "notes": notes,
        }

    def check(self, require_exact: bool, peer: str) -> None:
        """Raise when ``require_exact`` and some layer is not bitwise the peer's."""
        if require_exact and not self.exact:
            first = next(layer for layer in self.layers if not layer.exact)
            raise ConversionError(
                f"{peer}'s result cannot be converted exactly: {first.name}: {first.note or 'weights differ'} "
                f"(max |diff| {first.max_abs_diff:.3g}); set require_exact: false to convert it anyway, recorded"
            )

    def summary(self) -> dict[str, Any]:
        return {"conversion": self.to_dict(), "conversion_layers": [asdict(layer) for layer in self.layers]}


def difference(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[bool, float]:
    """(bitwise equal, max |ours - theirs|), both taken in float32."""
    a, b = ours.detach().float(), theirs.detach().float().reshape(ours.shape).to(ours.device)
    if torch.equal(a, b):
        return True, 0.0
    return False, float((a - b).abs().max())


def int8_activation_note(peer: str) -> str:
    """Why Int8DynamicLinear's per-token activations are not ``peer``'s (both symmetric)."""
    return (f"activations: {peer} quantizes each token on [-128, 127] with scale absmax/127.5, paqbench's "
            "Int8DynamicLinear on [-127, 127] with absmax/127")


def integer_weight(
    qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, bits: int, qmin: int,
    g_idx: torch.Tensor | None = None,
) -> tuple[QuantizedWeight, str]:
    """A :class:`QuantizedWeight` of signed codes ``qdata`` ``[out, in]`` in ``[qmin, qmin + 2**bits)``
    with ``scale`` and integer ``zero_point`` per row and group (``[out, G]``; None = 0), where the
    peer's weight is ``(qdata - zero_point) * scale``; groups are contiguous unless ``g_idx``
    (each column's group, act order) is given. A single scale for the whole tensor is repeated
    per row. Returns the weight and a note naming what is not carried exactly ('' when nothing is)."""
    out_features, in_features = qdata.shape
    scale = scale.detach()
    if scale.numel() == 1:  # per tensor: the same scale in every row
        scale = scale.reshape(1, 1).expand(out_features, 1)
        zero_point = None if zero_point is None else zero_point.reshape(1, 1).expand(out_features, 1)
    scale = scale.reshape(out_features, -1)
    groups = scale.shape[1]
    if g_idx is None and in_features % groups:
        raise ConversionError(f"{groups} groups do not divide {in_features} input columns evenly")
    group_size = -1 if groups == 1 else in_features // groups
    zero = torch.zeros_like(scale, dtype=torch.int32) if zero_point is None else zero_point.detach()
    zero = zero.reshape(out_features, groups)
    if not torch.equal(zero.float(), zero.float().round()):
        raise ConversionError("the zero points are not integers; paqbench's packed codes need integer zero points")
    codes = qdata.to(torch.int32) - qmin
    zeros = zero.to(torch.int32) - qmin
    maxq = (1 << bits) - 1
    for what, values in (("codes", codes), ("zero points", zeros)):
        if int(values.min()) < 0 or int(values.max()) > maxq:
            raise ConversionError(f"{what} fall outside the {bits}-bit range [{qmin}, {qmin + maxq}]")
    symmetric = bool((zeros == (maxq + 1) // 2).all())
    stored = scale.to(SCALE_DTYPE)
    note = "" if torch.equal(stored.to(scale.dtype), scale) else (
        f"{str(scale.dtype).removeprefix('torch.')} scales stored as float16"
    )
    config = QuantConfig(bits=bits, group_size=group_size, symmetric=symmetric)
    index = config.group_index(in_features, device=qdata.device) if g_idx is None else g_idx.to(torch.int32)
    quantized = QuantizedWeight(codes.to(torch.uint8), stored.contiguous(), zeros.to(torch.uint8).contiguous(),
                                index, config)
    return quantized, note


def install_packed(
    model: nn.Module, name: str, quantized: QuantizedWeight, reference: torch.Tensor, note: str,
    bias: torch.Tensor | None, mask: torch.Tensor | None, dtype: torch.dtype,
) -> LayerConversion:
    """Replace ``name`` with a QuantizedLinear of ``quantized``; ``reference`` is the peer's
    dequantized weight it is checked against."""
    layer = QuantizedLinear.from_quantized(quantized, bias, mask, dtype=dtype)
    check_masked_zero(layer.dequantize(), mask, name)
    exact, diff = difference(layer.dequantize(), reference)
    replace_module(model, name, layer)
    return LayerConversion(name, "packed", exact, diff, note if not exact else "")


def install_int8_dynamic(
    model: nn.Module, name: str, codes: torch.Tensor, scale: torch.Tensor, reference: torch.Tensor, note: str,
    bias: torch.Tensor | None, mask: torch.Tensor | None, dtype: torch.dtype,
) -> LayerConversion:
    """Replace ``name`` with an Int8DynamicLinear of int8 ``codes`` and per-row ``scale``."""
    out_features, in_features = codes.shape
    layer = Int8DynamicLinear(in_features, out_features, bias=bias is not None, device=codes.device, dtype=dtype)
    layer.weight_int8 = codes.to(torch.int8).contiguous()
    layer.weight_scale = scale.detach().reshape(out_features).to(torch.float32).contiguous()
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
    if mask is not None:
        layer.register_buffer(MASK_BUFFER, mask.to(torch.bool).clone(), persistent=False)
    check_masked_zero(layer.dequantize(), mask, name)
    exact, diff = difference(layer.dequantize(), reference)
    replace_module(model, name, layer)
    scale_note = "" if torch.equal(layer.weight_scale, scale.detach().reshape(out_features).float()) else (
        "scales stored as float32")
    notes = "; ".join(n for n in (scale_note, note) if n)
    return LayerConversion(name, "int8-dynamic", exact and not note, diff, notes)


def install_dense(
    model: nn.Module, name: str, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor | None,
    dtype: torch.dtype, note: str,
) -> LayerConversion:
    """Replace ``name`` with a plain Linear holding the peer's dequantized ``weight`` (in the
    model's ``dtype``: exact when the peer's weight is representable in it)."""
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(weight.to(dtype))
        if bias is not None:
            linear.bias.copy_(bias.detach())
    if mask is not None:
        linear.register_buffer(MASK_BUFFER, mask.to(torch.bool).clone(), persistent=False)
    check_masked_zero(linear.weight, mask, name)
    exact, diff = difference(linear.weight, weight)
    replace_module(model, name, linear)
    return LayerConversion(name, "dense", exact, diff, note)


def check_masked_zero(weight: torch.Tensor, mask: torch.Tensor | None, name: str) -> None:
    """A pruned weight the peer did not keep at exactly zero is refused, not carried."""
    if mask is not None and bool((weight.detach()[~mask.to(torch.bool)] != 0).any()):
        raise ConversionError(f"{name}: the peer moved pruned weights off zero; run the peer before pruning")


def layer_facts(module: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.dtype]:
    """(bias, recorded mask, dtype) of the Linear a peer is about to replace."""
    bias = module.bias.detach().clone() if getattr(module, "bias", None) is not None else None
    mask = get_mask(module)
    return bias, None if mask is None else mask.clone(), module.weight.dtype
