"""FP8 (E4M3) weights, with optional FP8 activations quantized at run time.

:class:`FP8Linear` replaces ``nn.Linear``. Persistent buffers (what ``save_pretrained``
writes; safetensors stores ``float8_e4m3fn`` as ``F8_E4M3``, one byte per weight):

=============  =============  ==========================================================
buffer         dtype          shape and meaning
=============  =============  ==========================================================
weight_fp8     float8_e4m3fn  ``[out, in]`` the weight divided by its scale
weight_scale   float32        ``[out]`` per channel, or ``[1]`` per tensor
fp8_meta       int32          ``[in_features, out_features, activations]`` (the loading
                              marker; activations 0 none, 1 per token, 2 per tensor)
bias           (param)        ``[out]`` when the original layer had one
=============  =============  ==========================================================

``W = weight_fp8.float() * weight_scale``, with ``weight_scale = max|W| / 448`` (448 is
E4M3's largest finite value) over the row or the whole tensor. E4M3 keeps 3 mantissa
bits: a normal value is within a relative 2^-4 of its input. 0.0 is exact, so pruned
weights stay exactly zero.

Activations, quantized dynamically at every call: ``s = max|x| / 448`` per token (row) or
over the whole input, ``x_q = fp8(x / s) * s``; ``none`` leaves them in float (weight-only).

Forward paths (``kernel`` names the one in use):

- ``reference``: exact emulation, everywhere: the weight dequantized to float32, the
  activations rounded through ``float8_e4m3fn`` with their scale, a float32 matmul.
- ``scaled_mm-cuda``: ``torch._scaled_mm`` (an FP8 tensor-core GEMM) on CUDA devices of
  compute capability >= 8.9 with FP8 activations and widths that are multiples of 16.
  Guarded and falls back to the reference on any error. **Untested on hardware here**
  (written against torch's documented signature, no FP8 GPU was available).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Unpack

import torch
import torch.nn.functional as F
from torch import nn

from paqbench.export.capability import check_target, converted, exact
from paqbench.layers.contract import SLICE_INPUTS, SLICE_OUTPUTS, ZERO_WEIGHTS, CompressedLayer, LayerOptions
from paqbench.layers.sparsity import get_mask, record_mask
from paqbench.quant import kernels
from paqbench.quant.quantizer import keep_mask

if TYPE_CHECKING:
    from paqbench.export.capability import Capability

FP8 = torch.float8_e4m3fn
#: Largest finite E4M3 value.
FP8_MAX = float(torch.finfo(FP8).max)
ACTIVATIONS = ("none", "per-token", "per-tensor")
SCALED_MM = "scaled_mm-cuda"


def to_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x / scale`` rounded to E4M3 (clamped to the finite range: the cast would give NaN)."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def amax_scale(x: torch.Tensor, dim: int | None) -> torch.Tensor:
    """``max|x| / 448`` over ``dim`` (kept) or the whole tensor (shape ``[1]``); 1 where all zero."""
    magnitude = x.detach().float().abs()
    amax = magnitude.amax().reshape(1) if dim is None else magnitude.amax(dim, keepdim=True)
    return torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))


def quantize_weight(
    weight: torch.Tensor, per_channel: bool = True, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 codes ``[out, in]`` and float32 scales (``[out]`` or ``[1]``); where ``keep`` is
    False the weight is exactly 0."""
    weight = weight.detach().float()
    if keep is not None:
        weight = weight * keep.to(device=weight.device, dtype=torch.bool)
    scale = amax_scale(weight, 1 if per_channel else None)
    return to_fp8(weight, scale), scale.reshape(-1)


def fake_quantize_activations(x: torch.Tensor, mode: str) -> torch.Tensor:
    """``x`` (float32 ``[m, in]``) rounded through E4M3 with its dynamic scale, in float32."""
    if mode == "none":
        return x
    scale = amax_scale(x, 1 if mode == "per-token" else None)
    return to_fp8(x, scale).float() * scale


class FP8Linear(CompressedLayer):
    """A linear layer with E4M3 weights (one byte each) and optional E4M3 activations."""

    name = "fp8"
    description = "E4M3 weights, one byte each, per-channel or per-tensor scales; optional dynamic E4M3 activations."
    capabilities = frozenset({ZERO_WEIGHTS, SLICE_INPUTS, SLICE_OUTPUTS})
    state_marker = "fp8_meta"
    meta_fields = ("in_features", "out_features", "activations")  # activations: index in ACTIVATIONS
    format_floats = ("weight_fp8", "weight_scale")
    repr_fields = ("in_features", "out_features", "activations", "per_channel")

    def __init__(
        self, in_features: int, out_features: int, *, activations: str = "per-token", per_channel: bool = True,
        **options: Unpack[LayerOptions],
    ) -> None:
        """An empty layer (weights zero, scales one), ready for ``load_state_dict``; use
        :meth:`from_linear` to fill one."""
        super().__init__()
        device = options.get("device")
        if activations not in ACTIVATIONS:
            raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
        self.in_features, self.out_features, self.activations = in_features, out_features, activations
        self.register_buffer("weight_fp8", torch.zeros(out_features, in_features, dtype=FP8, device=device))
        scales = out_features if per_channel else 1
        self.register_buffer("weight_scale", torch.ones(scales, dtype=torch.float32, device=device))
        self._init_layout(**options)
        #: The forward path in use (see the module docstring).
        self.kernel = kernels.REFERENCE

    @classmethod
    def from_linear(cls, linear: nn.Linear, activations: str = "per-token", per_channel: bool = True) -> FP8Linear:
        """Quantize ``linear``; its recorded mask (or exact zeros) stays exactly zero and the
        mask is carried over for later pruning steps."""
        layer = cls._empty_like(linear, activations=activations, per_channel=per_channel)
        layer.weight_fp8, layer.weight_scale = quantize_weight(linear.weight, per_channel, keep_mask(linear))
        layer._carry_over(linear.bias, get_mask(linear))
        return layer

    @property
    def per_channel(self) -> bool:
        return self.weight_scale.numel() == self.out_features and self.out_features > 1

    def dequantize(self) -> torch.Tensor:
        """The float32 weight ``[out, in]``."""
        scale = self.weight_scale.float()
        return self.weight_fp8.float() * (scale[:, None] if scale.numel() > 1 else scale)

    def export_capability(self, target: str) -> Capability:
        """compressed-tensors ``float-quantized`` holds the E4M3 bytes and scales as they are,
        with dynamic activations as its own input scheme (what vLLM loads): exact. GGUF has
        no FP8 tensor type: the dequantized weight in F16, activations not rounded."""
        check_target(target)
        if target == "gguf":
            return converted("F16", "GGUF has no FP8 tensor type: E4M3 weights dequantized, "
                                    "activation quantization not exported")
        return exact(f"float-quantized E4M3, {'per-channel' if self.per_channel else 'per-tensor'} scales, "
                     f"activations {self.activations}")

    # ------------------------------------------------------------------ forward

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The exact CPU emulation: activations fake-quantized to E4M3 as configured."""
        rows = x.reshape(-1, self.in_features)
        out = F.linear(fake_quantize_activations(rows.float(), self.activations), self.dequantize())
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        out = self._scaled_mm(rows) if self._use_scaled_mm(rows) else None
        if out is None:
            self.kernel = kernels.REFERENCE
            out = F.linear(fake_quantize_activations(rows.float(), self.activations), self.dequantize())
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out

    def _use_scaled_mm(self, rows: torch.Tensor) -> bool:
        if rows.device.type != "cuda" or self.activations == "none" or kernels.policy() == kernels.REFERENCE:
            return False
        if not hasattr(torch, "_scaled_mm") or self.in_features % 16 or self.out_features % 16:
            return False
        return torch.cuda.get_device_capability(rows.device) >= (8, 9)

    def _scaled_mm(self, rows: torch.Tensor) -> torch.Tensor | None:
        """FP8 GEMM via ``torch._scaled_mm`` (untested on hardware here); None on any error."""
        try:
            per_token = self.activations == "per-token"
            x_scale = amax_scale(rows, 1 if per_token else None)
            xq = to_fp8(rows, x_scale)
            w_scale = self.weight_scale.float()
            w_scale = w_scale[None, :] if per_token else w_scale.reshape(())
            if not per_token:
                x_scale = x_scale.reshape(())
                if self.per_channel:
                    return None  # per-tensor activations with per-channel weights: no single-call form
            out = torch._scaled_mm(xq, self.weight_fp8.T, scale_a=x_scale, scale_b=w_scale, out_dtype=torch.bfloat16)
        except (RuntimeError, TypeError, ValueError):
            return None
        self.kernel = SCALED_MM
        return out.float()

    def _meta_values(self) -> list[int]:
        return [self.in_features, self.out_features, ACTIVATIONS.index(self.activations)]

    def _read_meta(self, values: list[int]) -> None:
        self.in_features, self.out_features, self.activations = values[0], values[1], ACTIVATIONS[values[2]]

    # ------------------------------------------------------------------ editing (pruning)

    @torch.no_grad()
    def zero_weights(self, keep: torch.Tensor) -> None:
        """Unstructured pruning: weights where ``keep`` is False become exactly 0.0; the
        mask is recorded, combined with any earlier one."""
        keep = self._combined_keep(keep)
        self.weight_fp8 = torch.where(keep, self.weight_fp8.float(), 0.0).to(FP8)
        record_mask(self, keep)

    @torch.no_grad()
    def select_input_features(self, index: torch.Tensor) -> None:
        """Keep the input columns ``index`` (in that order); scales are unchanged."""
        self._select_columns(index, ("weight_fp8",))

    @torch.no_grad()
    def select_output_features(self, index: torch.Tensor) -> None:
        """Keep the output rows ``index`` (in that order) with their scales and bias."""
        self._select_rows(index, ("weight_fp8", "weight_scale") if self.per_channel else ("weight_fp8",))

    def _nonzero_weights(self) -> int:
        return int(torch.count_nonzero(self.weight_fp8.float()))

    # ------------------------------------------------------------------ loading

    @classmethod
    def empty_from_state(cls, state_dict: Mapping[str, torch.Tensor], name: str, device: torch.device) -> FP8Linear:
        """An empty layer of the layout saved under ``name`` in ``state_dict``."""
        in_features, out_features, mode = cls._saved_meta(state_dict, name)
        per_channel = state_dict[f"{name}.weight_scale"].numel() == out_features and out_features > 1
        return cls(in_features, out_features, activations=ACTIVATIONS[mode], per_channel=per_channel,
                   device=device, **cls._saved_bias(state_dict, name))

