"""The quantized linear layer of the compressed-layer contract.

:class:`QuantizedLinear` replaces ``nn.Linear``. It stores what a quantized checkpoint
really holds, as persistent buffers, so ``save_pretrained`` writes the packed bytes:

==========  ========  ===================================================================
buffer      dtype     shape and meaning
==========  ========  ===================================================================
qweight     uint8     ``[out, ceil(in * bits / 8)]`` codes packed along the input dim
qzeros      uint8     ``[out, ceil(G * bits / 8)]`` zero points (codes), packed likewise
scales      float16   ``[out, G]`` one scale per output row and group
g_idx       int32     ``[in]`` the group of each input column
qmeta       int32     ``[bits, group_size, symmetric, in_features, out_features]``
bias        (param)   ``[out]`` when the original layer had one
==========  ========  ===================================================================

``W[o, i] = (code[o, i] - zero[o, g_idx[i]]) * scale[o, g_idx[i]]``; see
:mod:`paqbench.quant.quantizer` for how grids are chosen. ``g_idx`` is the authority on
groups: after act-order or structured input slicing the groups are no longer
contiguous runs of ``group_size`` (which then only records how the layer was quantized).

Forward: the reference path dequantizes the whole weight on every call (nothing is
cached, so the layer's memory is its packed size; the float weight exists only during
the call), then ``F.linear``. Inside :func:`dequantize_once` (the layer-sequential
driver's scope for one decoder block, whose calibration runs every window through the
already quantized layers several times) each layer dequantizes once and reuses that
tensor until its codes change; leaving the scope drops them. A fast path (:mod:`paqbench.quant.kernels`) is used where
one applies; ``kernel`` names the path in use.

Pruning a quantized layer edits the codes: :meth:`QuantizedLinear.zero_weights`,
:meth:`QuantizedLinear.select_input_features`,
:meth:`QuantizedLinear.select_output_features`.

Loading a saved model back: build the architecture (``from_config`` or the original
checkpoint), then :func:`load_quantized` (``replace_with_quantized`` + ``load_state_dict``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from paqbench.export.grid import integer_grid_capability
from paqbench.layers.contract import (
    EXACT_GRID,
    SLICE_INPUTS,
    SLICE_OUTPUTS,
    ZERO_WEIGHTS,
    CompressedLayer,
)
from paqbench.layers.sparsity import get_mask, record_mask
from paqbench.layers.structured import rebuild_structured
from paqbench.quant import kernels
from paqbench.quant.grouped import GroupedCodes
from paqbench.quant.packing import pack, packed_length, unpack
from paqbench.quant.quantizer import (
    SCALE_DTYPE,
    QuantConfig,
    QuantizedWeight,
    dequantize,
    keep_mask,
    quantize_rtn,
)
from paqbench.registry import registered_formats
from paqbench.structure.config import rebuild_blocks

if TYPE_CHECKING:
    from paqbench.export.capability import Capability


@dataclass
class _Dequantized:
    """A layer's dequantized weight and the buffers it was computed from."""

    #: (tensor, version counter, data pointer) of qweight, qzeros, scales, g_idx
    sources: tuple[tuple[torch.Tensor, int, int], ...]
    weight: torch.Tensor

    def fresh(self, sources: tuple[tuple[torch.Tensor, int, int], ...], dtype: torch.dtype) -> bool:
        """Whether the buffers are still the same tensors, unchanged (an in-place edit
        moves the version counter, a reassignment the identity, ``.data =`` the pointer)."""
        return self.weight.dtype == dtype and len(sources) == len(self.sources) and all(
            old is new and old_version == version and old_ptr == ptr
            for (old, old_version, old_ptr), (new, version, ptr) in zip(self.sources, sources, strict=True)
        )


#: The active :func:`dequantize_once` scope's weights, by layer; None outside a scope.
_DEQUANTIZED: ContextVar[dict[QuantizedLinear, _Dequantized] | None] = ContextVar(
    "paqbench_dequantized", default=None
)


@contextmanager
def dequantize_once() -> Iterator[None]:
    """While active, the reference forward of every :class:`QuantizedLinear` dequantizes
    its weight once (per activation dtype) and reuses that tensor, bitwise the one a fresh
    dequantization gives, until the layer's buffers change; leaving the scope drops every
    such weight. For loops that run many windows through the same packed layers
    (layer-sequential calibration): memory grows by the float weights of the layers
    called inside the scope, so keep it to one decoder block. A nested scope shares the
    outer one's weights."""
    if _DEQUANTIZED.get() is not None:
        yield
        return
    token = _DEQUANTIZED.set({})
    try:
        yield
    finally:
        _DEQUANTIZED.reset(token)


class QuantizedLinear(GroupedCodes):
    """A linear layer whose weight is stored as packed low-bit codes."""

    name = "quantized-linear"
    description = "Integer grid: uint8-packed 2-8 bit codes, fp16 scales and zero points per row and group."
    capabilities = frozenset({ZERO_WEIGHTS, SLICE_INPUTS, SLICE_OUTPUTS, EXACT_GRID})
    state_marker = "qmeta"
    meta_fields = ("bits", "group_size", "symmetric", "in_features", "out_features")
    format_floats = ("scales",)  # float16 is the stored format: bfloat16 would lose 3 bits
    repr_fields = ("in_features", "out_features", "bits", "group_size", "symmetric")

    def _register_groups(self, config: QuantConfig, groups: int, device: torch.device | str | None) -> None:
        """Zero points zero, scales one (the constructor is :class:`GroupedCodes`'s:
        ``QuantizedLinear(in_features, out_features, QuantConfig(bits, group_size,
        symmetric), n_groups=None, bias=False, device=None, dtype=torch.float32)``)."""
        self.symmetric = config.symmetric
        self.register_buffer(
            "qzeros", torch.zeros(self.out_features, packed_length(groups, config.bits), dtype=torch.uint8,
                                  device=device)
        )
        self.register_buffer("scales", torch.ones(self.out_features, groups, dtype=SCALE_DTYPE, device=device))
        g_idx = config.group_index(self.in_features, device=device)
        if groups != config.n_groups(self.in_features):
            g_idx = torch.zeros(self.in_features, dtype=torch.int32, device=device)
        self.register_buffer("g_idx", g_idx)
        #: The forward path in use: "reference" or a fast kernel's name.
        self.kernel = kernels.REFERENCE
        self._kernel: kernels.Kernel | None = None
        self._kernel_key: tuple[torch.device, torch.dtype] | None = None

    # ------------------------------------------------------------------ building

    @classmethod
    def from_quantized(
        cls,
        quantized: QuantizedWeight,
        bias: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> QuantizedLinear:
        """Pack ``quantized`` into a layer. ``mask`` (a recorded pruning keep-mask) is
        carried over so later pruning steps see it; ``dtype`` is the model's dtype (of the
        bias, and of the activations the fast path is chosen for)."""
        out_features, in_features = quantized.codes.shape
        config = quantized.config
        device = quantized.codes.device
        options = cls._options_for(quantized.codes, bias, dtype)
        layer = cls(in_features, out_features, config, n_groups=quantized.scales.shape[1], **options)
        layer.qweight = pack(quantized.codes, config.bits)
        layer.qzeros = pack(quantized.zeros.to(device), config.bits)
        layer.scales = quantized.scales.to(device=device, dtype=SCALE_DTYPE).contiguous()
        layer.g_idx = quantized.g_idx.to(device=device, dtype=torch.int32).contiguous()
        layer._carry_over(bias, mask)
        layer._select_kernel(device, options["dtype"])
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantConfig) -> QuantizedLinear:
        """Round-to-nearest quantization of ``linear``; its recorded mask or exact zeros
        stay exactly zero."""
        keep = keep_mask(linear)
        quantized = quantize_rtn(linear.weight, config, keep)
        return cls.from_quantized(quantized, linear.bias, get_mask(linear), dtype=linear.weight.dtype)

    # ------------------------------------------------------------------ reading

    @property
    def n_groups(self) -> int:
        return self.scales.shape[1]

    def unpack_zeros(self) -> torch.Tensor:
        """The zero points (codes), uint8 ``[out, G]``."""
        return unpack(self.qzeros, self.bits, self.n_groups)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight ``[out, in]`` the codes stand for."""
        return dequantize(self.unpack_codes(), self.scales, self.unpack_zeros(), self.g_idx)

    def quantized_weight(self) -> QuantizedWeight:
        """The unpacked codes, scales, zeros and group index."""
        return QuantizedWeight(
            self.unpack_codes(), self.scales, self.unpack_zeros(), self.g_idx,
            QuantConfig(self.bits, self.group_size, self.symmetric),
        )

    def export_capability(self, target: str) -> Capability:
        """How this layer goes into export ``target`` (:mod:`paqbench.export`): codes copied
        where the target's blocks fit the groups, else written dequantized."""
        return integer_grid_capability(self, target)

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel_key != (x.device, x.dtype):
            self._select_kernel(x.device, x.dtype)
        if self._kernel is None or kernels.needs_backward(x):
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, self.reference_weight(x.dtype), bias)
        out = self._kernel.run(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out

    def reference_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight the reference path multiplies by, ``dequantize().to(dtype)``;
        inside :func:`dequantize_once` computed once and reused while the buffers are
        unchanged (not in inference mode, whose tensors could not be reused outside it)."""
        cache = _DEQUANTIZED.get()
        if cache is None or torch.is_inference_mode_enabled():
            return self.dequantize().to(dtype)
        sources = self._weight_sources()
        entry = cache.get(self)
        if entry is not None and sources is not None and entry.fresh(sources, dtype):
            return entry.weight
        weight = self.dequantize().to(dtype)
        if sources is not None:
            cache[self] = _Dequantized(sources, weight)
        return weight

    def _weight_sources(self) -> tuple[tuple[torch.Tensor, int, int], ...] | None:
        """What :meth:`reference_weight` is computed from, with version counters; None for
        inference tensors, which have none (never cached)."""
        buffers = (self.qweight, self.qzeros, self.scales, self.g_idx)
        if any(buffer.is_inference() for buffer in buffers):
            return None
        return tuple((buffer, buffer._version, buffer.data_ptr()) for buffer in buffers)

    def _forget_dequantized(self) -> None:
        """Drop this layer's weight from the active :func:`dequantize_once` scope."""
        cache = _DEQUANTIZED.get()
        if cache is not None:
            cache.pop(self, None)

    @torch.no_grad()
    def select_kernel(self, device: torch.device | str, dtype: torch.dtype) -> None:
        """Choose the fast path (or the reference) for activations of ``dtype`` on ``device``."""
        self._kernel = kernels.select_kernel(self, torch.device(device), dtype)
        self._kernel_key = (device, dtype)
        self.kernel = self._kernel.name if self._kernel is not None else kernels.REFERENCE

    _select_kernel = select_kernel

    def _invalidate(self) -> None:
        """Forget the fast path (and any reused dequantized weight) after the codes
        changed; the next forward chooses again."""
        self._forget_dequantized()
        self._write_meta()
        key = self._kernel_key
        self._kernel = None
        self._kernel_key = None
        self.kernel = kernels.REFERENCE
        if key is not None:
            self._select_kernel(*key)

    # ------------------------------------------------------------------ editing (pruning)

    @torch.no_grad()
    def zero_weights(self, keep: torch.Tensor) -> None:
        """Unstructured pruning of a quantized layer: where ``keep`` is False, set the code
        to its group's zero point, so the weight dequantizes to exactly 0.0. The mask is
        recorded (combined with any earlier one) as ``paqbench_mask``."""
        keep = self._combined_keep(keep)
        codes = self.unpack_codes()
        zero = self.unpack_zeros().index_select(1, self.g_idx.long())
        self.qweight = pack(torch.where(keep, codes, zero), self.bits)
        record_mask(self, keep)
        self._invalidate()

    @torch.no_grad()
    def select_input_features(self, index: torch.Tensor) -> None:
        """Structured pruning of input columns: keep the columns ``index`` (in that order).
        Codes are unpacked, sliced and repacked; ``g_idx`` is sliced with them, and groups
        no column uses any more are dropped (their scales and zeros too)."""
        zeros = self.unpack_zeros()
        index, used = self._slice_code_columns(index, scales=1)
        self.qzeros = pack(zeros.index_select(1, used), self.bits)
        self._finish_slice(index, "input")

    @torch.no_grad()
    def select_output_features(self, index: torch.Tensor) -> None:
        """Structured pruning of output rows: keep the rows ``index`` (in that order), with
        their scales, zeros and bias. Rows are packed independently: no repacking."""
        self._select_rows(index, ("qweight", "qzeros", "scales"))

    # ------------------------------------------------------------------ accounting

    def _nonzero_weights(self) -> int:
        """Codes that differ from their zero point (the weights that dequantize nonzero)."""
        zero = self.unpack_zeros().index_select(1, self.g_idx.long())
        return int((self.unpack_codes() != zero).sum())

    # ------------------------------------------------------------------ loading

    @classmethod
    def empty_from_state(
        cls, state_dict: Mapping[str, torch.Tensor], name: str, device: torch.device
    ) -> QuantizedLinear:
        """An empty layer of the layout saved under ``name`` in ``state_dict``."""
        bits, group_size, symmetric, in_features, out_features = cls._saved_meta(state_dict, name)
        return cls(in_features, out_features, QuantConfig(bits, group_size, bool(symmetric)),
                   n_groups=state_dict[f"{name}.scales"].shape[1], device=device, **cls._saved_bias(state_dict, name))


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the qualified ``name`` inside ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def format_markers() -> dict[str, type[CompressedLayer]]:
    """Checkpoint marker -> registered layer format (wrappers are rebuilt by
    :func:`paqbench.layers.structured.rebuild_structured`, outer ones first)."""
    markers: dict[str, type[CompressedLayer]] = {}
    for name, cls in registered_formats().items():
        if cls.state_marker is None or cls.container:
            continue
        if cls.state_marker in markers:
            raise ValueError(f"layer formats {markers[cls.state_marker].name!r} and {name!r} declare the same "
                             f"state_marker {cls.state_marker!r}: a checkpoint could not say which to rebuild")
        markers[cls.state_marker] = cls
    return markers


def replace_with_quantized(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Swap in an empty layer of the saved layout wherever ``state_dict`` holds one (a
    ``<name>.<state_marker>`` key of a registered layer format, e.g. ``qmeta``); returns
    the names. ``load_state_dict`` then fills them. Formats come from the registry
    (``paqbench_register_layer_formats``), so a third-party format loads like a built-in."""
    markers = format_markers()
    replaced = []
    for key in list(state_dict):
        name, _, marker = key.rpartition(".")
        layer_class = markers.get(marker)
        if layer_class is None or not name:
            continue
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the checkpoint has a quantized layer {name!r} that the model lacks") from None
        reference = getattr(old, "weight", None)
        device = reference.device if reference is not None else state_dict[key].device
        replace_module(model, name, layer_class.empty_from_state(state_dict, name, device))
        replaced.append(name)
    return replaced


def load_quantized(
    model: nn.Module, source: str | Path | Mapping[str, torch.Tensor]
) -> nn.Module:
    """Load a model saved after quantization (``save_pretrained`` directory of
    ``*.safetensors`` files, or a state dict) into ``model``, a model of the same
    architecture: shrunk decoder blocks (:func:`paqbench.structure.rebuild_blocks`),
    structured-pruning wrappers and quantized layers are rebuilt (in that order), then
    every tensor is loaded.

    Weights missing from ``source`` are an error unless tied to a loaded one (e.g. an LM
    head tied to the embeddings, which ``save_pretrained`` stores once).
    """
    state_dict = _read_state_dict(source) if not isinstance(source, Mapping) else dict(source)
    rebuild_blocks(model, state_dict)  # blocks shrunk by structured pruning: their sizes first
    rebuild_structured(model, state_dict)  # structured-pruning wrappers first: they hold the layers
    replace_with_quantized(model, state_dict)
    for layer_format in registered_formats().values():
        layer_format.after_load(model, state_dict)
    result = model.load_state_dict(state_dict, strict=False)
    tensors = _named_tensors(model)
    loaded = {id(tensor) for name, tensor in tensors.items() if name in state_dict}
    missing = [key for key in result.missing_keys if id(tensors[key]) not in loaded]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"checkpoint does not match the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return model


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(model.named_buffers(remove_duplicate=False))
    return named


def _read_state_dict(directory: str | Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {directory}")
    state_dict: dict[str, Any] = {}
    for file in files:
        state_dict.update(load_file(str(file)))
    return state_dict

