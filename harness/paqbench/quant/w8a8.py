"""W8A8 "int8 dynamic": int8 weights and int8 activations quantized per token at run time.

:class:`Int8DynamicLinear` replaces ``nn.Linear``. Persistent buffers (what
``save_pretrained`` writes):

=============  =======  ==============================================================
buffer         dtype    shape and meaning
=============  =======  ==============================================================
weight_int8    int8     ``[out, in]`` codes in ``[-127, 127]``
weight_scale   float32  ``[out]`` one symmetric scale per output row
w8a8_meta      int32    ``[in_features, out_features]`` (the loading marker)
bias           (param)  ``[out]`` when the original layer had one
=============  =======  ==============================================================

``W[o, i] = weight_int8[o, i] * weight_scale[o]``, ``weight_scale = max|W[o]| / 127``.
Forward, for each token (row) ``t`` of the input: ``s_t = max|x_t| / 127``,
``q_t = round(x_t / s_t)`` clamped to ``[-127, 127]``, then the int32 accumulation
``acc = q @ weight_int8.T`` and ``y = acc * s_t * weight_scale (+ bias)`` in float32, cast
to the activation dtype. Code 0 is exactly 0.0, so pruned weights stay exactly zero.

Paths for ``acc`` (``kernel`` names the one in use, chosen per activation device and
dtype on the first forward; each is probed against exact integer arithmetic first):

- ``int_mm-cuda``: ``torch._int_mm`` (cuBLASLt int8 GEMM); needs ``in`` and ``out``
  multiples of 8, rows are padded to at least 17.
- ``onednn-int8``: oneDNN's int8 linear (``torch.ops.onednn.qlinear_pointwise``) on CPU.
  Only used where it is exact: on AVX2 CPUs without VNNI its ``u8 x s8`` pairs saturate
  at 16 bits for full-range int8 activations and the probe rejects it.
- ``int_mm-cpu``: ``torch._int_mm`` on CPU, exact but in this torch build 30x slower than a
  float32 matmul (measured: 145 ms vs 5 ms for 128 x 576 @ 576 x 1536), so only with
  ``PAQBENCH_QUANT_KERNEL=any``.
- ``reference``: the same integers from float32 matmuls over chunks of at most 1024 input
  columns (every partial sum is an integer of magnitude <= 1024 * 127^2 < 2^24, so each
  chunk is exact in any summation order), summed in float64. Bit-identical ``acc``; the
  speed of a float32 matmul, not of int8. Float64 where float32 matmuls may round
  (TF32 / reduced ``float32_matmul_precision``).

``PAQBENCH_QUANT_KERNEL=reference`` forces the reference path (shared with
:mod:`paqbench.quant.kernels`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Unpack

import torch
import torch.nn.functional as F
from torch import nn

from paqbench.export.capability import check_target, converted
from paqbench.layers.contract import SLICE_INPUTS, SLICE_OUTPUTS, ZERO_WEIGHTS, CompressedLayer, LayerOptions
from paqbench.layers.sparsity import get_mask, record_mask
from paqbench.quant import kernels
from paqbench.quant.quantizer import keep_mask

if TYPE_CHECKING:
    from paqbench.export.capability import Capability

QMAX = 127
#: Input columns per exact float32 chunk: 1024 * 127 * 127 < 2**24.
EXACT_CHUNK = 1024

Accumulate = Callable[[torch.Tensor], torch.Tensor]  # int8 [m, in] -> float32/float64 [m, out] holding integers


def quantize_weight(weight: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-row symmetric int8 codes and float32 scales of ``weight`` ``[out, in]``;
    where ``keep`` is False the code is 0 (exactly 0.0). An all-zero row gets scale 1."""
    weight = weight.detach().float()
    if keep is not None:
        weight = weight * keep.to(device=weight.device, dtype=torch.bool)
    amax = weight.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    codes = torch.round(weight / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8)
    return codes, scale


def quantize_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8 of ``x`` ``[m, in]``: codes int8 and scales float32 ``[m, 1]``
    (an all-zero row gets scale 1 and codes 0)."""
    x = x.float()
    amax = x.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    return torch.round(x / scale).clamp(-QMAX, QMAX).to(torch.int8), scale


def exact_accumulate(xq: torch.Tensor, weight_int8: torch.Tensor) -> torch.Tensor:
    """``xq @ weight_int8.T`` in int64 (the integer ground truth, for probes and tests)."""
    return xq.cpu().long() @ weight_int8.cpu().long().T


class Int8DynamicLinear(CompressedLayer):
    """A linear layer with int8 weights that quantizes its input per token to int8."""

    name = "int8-dynamic"
    description = "int8 weights with per-row float32 scales; activations quantized to int8 per token at run time."
    capabilities = frozenset({ZERO_WEIGHTS, SLICE_INPUTS, SLICE_OUTPUTS})
    state_marker = "w8a8_meta"
    meta_fields = ("in_features", "out_features")
    format_floats = ("weight_scale",)
    repr_fields = ("in_features", "out_features")

    def __init__(
        self, in_features: int, out_features: int, **options: Unpack[LayerOptions]
    ) -> None:
        """An empty layer (codes zero, scales one), ready for ``load_state_dict``; use
        :meth:`from_linear` to fill one."""
        super().__init__()
        device = options.get("device")
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self._init_layout(**options)
        #: The accumulation path in use (see the module docstring).
        self.kernel = kernels.REFERENCE
        self._accumulate: Accumulate | None = None
        self._kernel_key: tuple[torch.device, torch.dtype] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8DynamicLinear:
        """Quantize ``linear``'s weight per output row; its recorded mask (or exact zeros)
        stays exactly zero and the mask is carried over for later pruning steps."""
        layer = cls._empty_like(linear)
        layer.weight_int8, layer.weight_scale = quantize_weight(linear.weight, keep_mask(linear))
        layer._carry_over(linear.bias, get_mask(linear))
        return layer

    def dequantize(self) -> torch.Tensor:
        """The float32 weight ``[out, in]`` the codes stand for."""
        return self.weight_int8.float() * self.weight_scale.float()[:, None]

    def export_capability(self, target: str) -> Capability:
        """Written dequantized: the per-token int8 activations are not exported, so the
        engine runs the int8-rounded weights on float activations."""
        check_target(target)
        return converted("F16" if target == "gguf" else "float16 tensor",
                         "int8 weights dequantized; per-token activation quantization not exported")

    # ------------------------------------------------------------------ forward

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same computation in float: per-token int8 activations (dequantized) times
        the dequantized weight."""
        rows = x.reshape(-1, self.in_features).float()
        xq, x_scale = quantize_tokens(rows)
        out = F.linear(xq.float() * x_scale, self.dequantize().to(rows.device))
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel_key != (x.device, x.dtype):
            self.select_kernel(x.device, x.dtype)
        assert self._accumulate is not None
        rows = x.reshape(-1, self.in_features)
        xq, x_scale = quantize_tokens(rows)
        acc = self._accumulate(xq)
        out = (acc.float() * x_scale) * self.weight_scale[None, :]
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out

    @torch.no_grad()
    def select_kernel(self, device: torch.device | str, dtype: torch.dtype) -> None:
        """Choose the accumulation path for activations of ``dtype`` on ``device`` (forward
        does this on first use; call it to record the path beforehand)."""
        device = torch.device(device)
        self.kernel, self._accumulate = select_accumulate(self.weight_int8, device)
        self._kernel_key = (device, dtype)

    def _invalidate(self) -> None:
        self._write_meta()
        key = self._kernel_key
        self._accumulate, self._kernel_key, self.kernel = None, None, kernels.REFERENCE
        if key is not None:
            self.select_kernel(*key)

    # ------------------------------------------------------------------ editing (pruning)

    @torch.no_grad()
    def zero_weights(self, keep: torch.Tensor) -> None:
        """Unstructured pruning: codes where ``keep`` is False become 0 (exactly 0.0); the
        mask is recorded, combined with any earlier one."""
        keep = self._combined_keep(keep)
        self.weight_int8 = torch.where(keep, self.weight_int8, torch.zeros_like(self.weight_int8))
        record_mask(self, keep)
        self._invalidate()

    @torch.no_grad()
    def select_input_features(self, index: torch.Tensor) -> None:
        """Keep the input columns ``index`` (in that order); row scales are unchanged."""
        self._select_columns(index, ("weight_int8",))

    @torch.no_grad()
    def select_output_features(self, index: torch.Tensor) -> None:
        """Keep the output rows ``index`` (in that order) with their scales and bias."""
        self._select_rows(index, ("weight_int8", "weight_scale"))

    # ------------------------------------------------------------------ accounting

    def _nonzero_weights(self) -> int:
        return int(torch.count_nonzero(self.weight_int8))

    def _apply(self, fn: Any, recurse: bool = True) -> Int8DynamicLinear:
        """As every format (the row scales keep float32); the path is chosen again."""
        result = super()._apply(fn, recurse)
        self._accumulate, self._kernel_key, self.kernel = None, None, kernels.REFERENCE
        return result

    # ------------------------------------------------------------------ loading

    @classmethod
    def empty_from_state(
        cls, state_dict: Mapping[str, torch.Tensor], name: str, device: torch.device
    ) -> Int8DynamicLinear:
        """An empty layer of the layout saved under ``name`` in ``state_dict``."""
        in_features, out_features = cls._saved_meta(state_dict, name)
        return cls(in_features, out_features, device=device, **cls._saved_bias(state_dict, name))


# ------------------------------------------------------------------------------ paths


def reference_accumulate(weight_int8: torch.Tensor) -> Accumulate:
    """Exact ``acc`` from float matmuls over chunks of <= :data:`EXACT_CHUNK` columns."""
    exact_float32 = weight_int8.device.type == "cpu" and torch.get_float32_matmul_precision() == "highest"
    dtype = torch.float32 if exact_float32 else torch.float64
    weight_t = weight_int8.to(dtype).T.contiguous()
    in_features = weight_t.shape[0]

    def run(xq: torch.Tensor) -> torch.Tensor:
        x = xq.to(dtype)
        if in_features <= EXACT_CHUNK:
            return x @ weight_t
        acc = torch.zeros(x.shape[0], weight_t.shape[1], dtype=torch.float64, device=x.device)
        for start in range(0, in_features, EXACT_CHUNK):
            acc += (x[:, start:start + EXACT_CHUNK] @ weight_t[start:start + EXACT_CHUNK]).double()
        return acc

    return run


def _int_mm_accumulate(weight_int8: torch.Tensor) -> Accumulate | None:
    if not hasattr(torch, "_int_mm"):
        return None
    out_features, in_features = weight_int8.shape
    if weight_int8.device.type == "cuda" and (in_features % 8 or out_features % 8):
        return None
    weight_t = weight_int8.T  # [in, out], column-major: the layout cuBLASLt's int8 GEMM wants
    min_rows = 17 if weight_int8.device.type == "cuda" else 1

    def run(xq: torch.Tensor) -> torch.Tensor:
        rows = xq.shape[0]
        if rows < min_rows:
            xq = torch.cat([xq, xq.new_zeros(min_rows - rows, xq.shape[1])])
        return torch._int_mm(xq.contiguous(), weight_t)[:rows]

    return run


def _onednn_accumulate(weight_int8: torch.Tensor) -> Accumulate | None:
    ops = getattr(torch.ops, "onednn", None)
    if weight_int8.device.type != "cpu" or ops is None or not hasattr(ops, "qlinear_pointwise"):
        return None
    if not torch.backends.mkldnn.is_available():
        return None
    packed = ops.qlinear_prepack(weight_int8.contiguous(), None)
    out_features = weight_int8.shape[0]
    ones = torch.ones(out_features, dtype=torch.float32)
    zeros = torch.zeros(out_features, dtype=torch.int64)

    def run(xq: torch.Tensor) -> torch.Tensor:
        # int8 activations shifted to uint8 with zero point 128: exactly the same integers
        shifted = (xq.to(torch.int16) + 128).to(torch.uint8)
        return ops.qlinear_pointwise(shifted, 1.0, 128, packed, ones, zeros, None, 1.0, 0, torch.float32,
                                     "none", [], "")

    return run


Factory = Callable[[torch.Tensor], "Accumulate | None"]

#: Fast paths by name: each builds an accumulation for an int8 weight, or None where it
#: does not apply.
_PATHS: dict[str, Factory] = {
    "int_mm-cuda": _int_mm_accumulate,
    "onednn-int8": _onednn_accumulate,
    "int_mm-cpu": _int_mm_accumulate,
}


@torch.no_grad()
def probe_exact(factory: Factory, weight_int8: torch.Tensor) -> Accumulate | None:
    """The path ``factory`` builds for ``weight_int8``, if it gives exactly the integer
    ``acc``: on random full-range activations with the layer's codes (1 and 33 rows:
    kernels may take another code path for a single token), and on worst-case ones (rows
    of +-127 aligned with, opposed to and independent of a +-127 weight of the same shape,
    where 16-bit pair sums would saturate). None when it fails or raises."""
    device = weight_int8.device
    generator = torch.Generator().manual_seed(0)
    out_features, in_features = weight_int8.shape
    signs = torch.where(torch.rand(out_features, in_features, generator=generator) < 0.5, -QMAX, QMAX)
    extreme = signs.to(torch.int8)
    worst_x = torch.cat([extreme[:2], -extreme[:2], torch.full((1, in_features), QMAX, dtype=torch.int8)])
    try:
        run = factory(weight_int8)
        worst = factory(extreme.to(device))
        if run is None or worst is None:
            return None
        cases = [(run, torch.randint(-QMAX, QMAX + 1, (rows, in_features), generator=generator, dtype=torch.int8),
                  weight_int8) for rows in (1, 33)]
        cases.append((worst, worst_x, extreme))
        for path, x, weight in cases:
            result = path(x.to(device))
            expected = exact_accumulate(x, weight)
            if result.shape != expected.shape or not torch.equal(result.cpu().double(), expected.double()):
                return None
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return None
    return run


def candidate_paths(device: torch.device) -> list[str]:
    """The fast paths tried, in order, for ``device`` under the kernel policy."""
    mode = kernels.policy()
    if mode == kernels.REFERENCE:
        return []
    if device.type == "cuda":
        return ["int_mm-cuda"]
    if device.type == "cpu":
        return ["onednn-int8", "int_mm-cpu"] if mode == "any" else ["onednn-int8"]
    return []


def select_accumulate(weight_int8: torch.Tensor, device: torch.device) -> tuple[str, Accumulate]:
    """The first fast path that builds for ``weight_int8`` (on ``device``) and is exact,
    else the reference path."""
    weight_int8 = weight_int8.to(device)
    for name in candidate_paths(device):
        run = probe_exact(_PATHS[name], weight_int8)
        if run is not None:
            return name, run
    return kernels.REFERENCE, reference_accumulate(weight_int8)

