"""Fast forward paths for :class:`paqbench.quant.linear.QuantizedLinear` (and the LM
head tied to a :class:`~paqbench.quant.embedding.QuantizedEmbedding`).

A fast path is a real low-bit kernel that multiplies by the codes without building the
float weight. One is used only when it exists in this torch build, the layer's layout
fits it, and a probe (:func:`probe`) shows it is as accurate as the reference path
(dequantize, then ``F.linear``) up to a documented budget; otherwise the layer runs the
reference path. The choice is made per (device, dtype) of
the activations, on the first forward with that pair, and recorded in the layer's
``kernel`` attribute.

Kernels (CPU, torch >= 2.5):

- ``int4-cpu``: ``aten._weight_int4pack_mm_for_cpu`` for 4-bit layers whose group
  index is constant on chunks of 32/64/128/256 columns (contiguous groups, including a
  shorter last group such as 576 = 4x128 + 64, and per-channel layers whose width is a
  multiple of 32). Needs ``out_features % 16 == 0``.
- ``int8-cpu``: ``aten._weight_int8pack_mm`` for 8-bit layers with one group per row
  (per channel) and a symmetric grid (zero point 128).

Policy (environment variable ``PAQBENCH_QUANT_KERNEL``): ``auto`` (default) tries the
fast paths for float16/bfloat16 activations only; ``any`` tries them for float32 too;
``reference`` never. Why not float32 by default: on an AVX2 CPU (no AVX-512) these
kernels run float32 activations 10-30x slower than a dense float32 matmul at prefill
sizes (measured with torch 2.13: 2048x576 @ 576x1536 took 6-8 s in int4, 4 s in int8,
0.07 s dense), while for bfloat16 they beat dequantize-then-matmul.

Each fast path keeps its own copy of the codes in the kernel's layout (about the size of
the packed codes) plus expanded scales; it is not saved and is rebuilt after any edit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

POLICY_ENV = "PAQBENCH_QUANT_KERNEL"
REFERENCE = "reference"
_HALF = (torch.float16, torch.bfloat16)
_INT4_GROUPS = (256, 128, 64, 32)


def needs_backward(x: torch.Tensor) -> bool:
    """The integer kernels have no derivative: a forward that autograd records (a
    distillation step training layers around the packed ones) takes the reference path,
    which dequantizes and is differentiable in the activations."""
    return torch.is_grad_enabled() and x.requires_grad


class PackedLayout(Protocol):
    """What a kernel reads from a packed layer: its codes in the
    :class:`~paqbench.quant.linear.QuantizedLinear` layout (``[out, in]``, groups along
    ``in``). QuantizedLinear has it; so does a quantized token table seen as the head."""

    bits: int
    in_features: int
    out_features: int
    scales: torch.Tensor
    g_idx: torch.Tensor

    def unpack_codes(self) -> torch.Tensor: ...
    def unpack_zeros(self) -> torch.Tensor: ...
    def dequantize(self) -> torch.Tensor: ...


@dataclass
class Kernel:
    """A prepared fast path: ``run(x2d)`` maps ``[m, in]`` to ``[m, out]`` (no bias);
    ``effective_weight()`` is the float32 weight its arithmetic multiplies by (the
    layer's, up to how the kernel rounds scales and offsets), used by the probe."""

    name: str
    run: Callable[[torch.Tensor], torch.Tensor]
    effective_weight: Callable[[], torch.Tensor]


def policy() -> str:
    value = os.environ.get(POLICY_ENV, "auto").strip().lower() or "auto"
    if value not in ("auto", "any", REFERENCE):
        raise ValueError(f"{POLICY_ENV}={value!r}: expected auto, any or reference")
    return value


def select_kernel(layer: PackedLayout, device: torch.device, dtype: torch.dtype) -> Kernel | None:
    """The first fast path that applies to ``layer`` for activations of ``dtype`` on
    ``device`` and passes the probe; None means the reference path."""
    mode = policy()
    if mode == REFERENCE or (mode == "auto" and dtype not in _HALF):
        return None
    if device.type != "cpu" or not dtype.is_floating_point:
        return None
    for build in (_int4_cpu, _int8_cpu):
        try:
            kernel = build(layer, dtype)
        except (RuntimeError, NotImplementedError):
            kernel = None
        if kernel is not None and probe(layer, kernel, dtype):
            return kernel
    return None


@torch.no_grad()
def probe(layer: PackedLayout, kernel: Kernel, dtype: torch.dtype, rows: int = 8) -> bool:
    """Whether ``kernel`` may replace the reference path. Two checks:

    1. Precision: the weight the kernel effectively multiplies by differs from the
       dequantized weight by at most twice what casting that weight to ``dtype`` costs
       (the reference path's own loss), or by at most 10% of the quantization grid's
       rounding noise (RMS ``scale / sqrt(12)``), whichever is larger. The CPU kernels
       take scales in the activation dtype; for 4-bit bfloat16 this costs 2-5% of the
       rounding noise (well inside), and for 8-bit about what the cast costs.
    2. Arithmetic: on random inputs its output matches exact float32 arithmetic with
       that effective weight as closely as the reference path matches its own exact
       result (twice the relative error, plus 1e-4). Layout or packing bugs give errors
       near 100% and are always caught.
    """
    weight = layer.dequantize()
    effective = kernel.effective_weight().to(weight.device)
    cast_error = float((weight.to(dtype).float() - weight).norm())
    step = layer.scales.float().index_select(1, layer.g_idx.long())
    noise = float(step.norm()) / 12**0.5
    if float((effective - weight).norm()) > max(2 * cast_error, 0.1 * noise):
        return False
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, layer.in_features, generator=generator).to(device=weight.device, dtype=dtype)
    try:
        fast = kernel.run(x).float()
    except (RuntimeError, NotImplementedError):
        return False
    if fast.shape != (rows, layer.out_features) or not bool(torch.isfinite(fast).all()):
        return False
    exact = x.float() @ weight.T
    reference = F.linear(x, weight.to(dtype)).float()
    error_reference = float((reference - exact).norm() / exact.norm().clamp_min(1e-30))
    target = x.float() @ effective.T
    error_fast = float((fast - target).norm() / target.norm().clamp_min(1e-30))
    return error_fast <= 2 * error_reference + 1e-4


def _chunk_groups(g_idx: torch.Tensor, chunk: int) -> torch.Tensor | None:
    """Each ``chunk``-column slice's group, if ``g_idx`` is constant on every slice."""
    if g_idx.numel() % chunk:
        return None
    blocks = g_idx.long().view(-1, chunk)
    if not bool((blocks == blocks[:, :1]).all()):
        return None
    return blocks[:, 0]


def _int4_cpu(layer: PackedLayout, dtype: torch.dtype) -> Kernel | None:
    convert = getattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu", None)
    matmul = getattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu", None)
    if layer.bits != 4 or convert is None or matmul is None or layer.out_features % 16:
        return None
    for chunk in _INT4_GROUPS:
        groups = _chunk_groups(layer.g_idx, chunk)
        if groups is not None:
            break
    else:
        return None
    codes = layer.unpack_codes().to(torch.int32)
    packed = convert(codes, 2)
    scale = layer.scales.float().index_select(1, groups)  # [out, chunks]
    zero = layer.unpack_zeros().float().index_select(1, groups)
    # the kernel computes (c - 8) * scale + offset; ours is (c - zero) * scale
    scale_offset = torch.stack([scale.T, ((8 - zero) * scale).T], dim=-1).contiguous().to(dtype)

    def effective_weight() -> torch.Tensor:
        kernel_scale = scale_offset[..., 0].float().T.repeat_interleave(chunk, dim=1)
        kernel_offset = scale_offset[..., 1].float().T.repeat_interleave(chunk, dim=1)
        return (codes.float() - 8) * kernel_scale + kernel_offset

    return Kernel("int4-cpu", lambda x: matmul(x, packed, chunk, scale_offset), effective_weight)


def _int8_cpu(layer: PackedLayout, dtype: torch.dtype) -> Kernel | None:
    matmul = getattr(torch.ops.aten, "_weight_int8pack_mm", None)
    if layer.bits != 8 or matmul is None:
        return None
    if not bool((layer.g_idx == layer.g_idx[0]).all()):
        return None
    group = int(layer.g_idx[0])
    zero = layer.unpack_zeros()[:, group]
    if not bool((zero == 128).all()):
        # An asymmetric zero point would need a rank-1 correction added to the kernel's
        # output, which comes rounded to the activation dtype: the cancellation costs
        # about 1% in bfloat16, four times the reference path's error.
        return None
    kernel_scale = layer.scales[:, group].to(dtype).contiguous()
    shifted = (layer.unpack_codes().to(torch.int16) - 128).to(torch.int8).contiguous()

    def effective_weight() -> torch.Tensor:
        return shifted.float() * kernel_scale.float().unsqueeze(1)

    return Kernel("int8-cpu", lambda x: matmul(x, shifted, kernel_scale), effective_weight)
