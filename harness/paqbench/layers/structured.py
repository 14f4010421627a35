"""Structured pruning that really shrinks tensors.

Removing whole input columns or output rows of a linear layer only saves memory and
compute if the smaller matmul is what runs. Instead of a masked full-size weight, a
pruned layer becomes a small *wrapper* around an ordinary, smaller layer:

* :class:`InputSelect` keeps ``K`` of the ``in_features`` input channels: it gathers
  them from the activation (``x.index_select(-1, index)``) and runs the inner layer,
  whose weight is ``[out, K]``. The output shape is unchanged.
* :class:`OutputScatter` keeps ``K`` of the ``out_features`` output channels: the inner
  layer computes ``[..., K]`` and the result is scattered into zeros of the full width,
  so the next layer and the residual stream see the shape they expect. A removed output
  channel produces exactly 0, its bias included.

Why a wrapper and not a new layer kind: the inner layer stays what it was (a dense
``nn.Linear``, a masked one, or a quantized layer), with its own kind. So every later
step of a pipeline (GPTQ, RTN, magnitude, another structured pass) finds it with
:func:`paqbench.layers.select_targets` and compresses it unchanged, and the params
metric reports its real, smaller shape. The wrapper itself is not a target (it declares
no layer kind); it holds only the kept index, a persistent ``int64`` buffer, so a
safetensors checkpoint stores the smaller weight plus the index. Pruning a layer that
already sits inside a wrapper of the same direction folds the two indices into one
wrapper, so repeated pruning never stacks gathers. The index buffers are named
``input_index`` / ``output_index``, so :func:`rebuild_structured` can put the wrappers
back into a fresh model before ``load_state_dict`` reads a saved checkpoint.

Speed: the smaller matmul is real, but so are the gather and the scatter (an extra read
and write of the activation per layer) and one more module call per layer. At 10-35%
per-layer pruning they cost about what the matmul saves: on an H100 (bf16, [1, 2048],
Llama-3.2-3B shapes) input pruning ran 14-20% slower than dense and output pruning 40%
slower with widths rounded to multiples of 8, and 2.6-4x slower with the exact (odd)
widths, which miss the tensor cores; see ``kept_count(multiple_of=...)``. What falls for
sure is parameters, checkpoint bytes and weight memory.

Every layer is pruned through the compressed-layer contract
(:mod:`paqbench.layers.contract`): ``dequantized_weight()`` for the norms, and
``sliced(index, dim)``, which edits a format in place (``select_input_features`` /
``select_output_features`` slice codes, scales, zero points, group index and bias
consistently) or returns a smaller ``nn.Linear`` for a float one, then wrapped. The
wrappers are contract members themselves (kind ``structured``, a *container*: never a
target, their accounting is their inner layer's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from paqbench.export.capability import check_target, converted
from paqbench.layers.contract import CompressedLayer, as_layer, dequantized_weight

if TYPE_CHECKING:
    from paqbench.export.capability import Capability

Dim = Literal["input", "output"]
Norm = Literal["l1", "l2"]


def kept_count(channels: int, ratio: float, multiple_of: int = 1) -> int:
    """Channels kept when ``ratio`` of ``channels`` are removed: ``channels -
    round(ratio * channels)``, the count ``torch.nn.utils.prune.ln_structured`` uses.

    With ``multiple_of > 1`` a pruned width is rounded down to a multiple of it (at least
    one multiple): fp16/bf16 GEMMs need widths divisible by 8 to run on tensor cores, and
    on an H100 a 3072 x 2765 matmul ran 4-6x slower than 3072 x 2760. A layer that loses
    no channel keeps its width, so ratio 0 stays the identity.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be at least 1, got {multiple_of}")
    keep = channels - round(ratio * channels)
    if keep == channels or multiple_of == 1:
        return keep
    return max(keep // multiple_of * multiple_of, min(multiple_of, keep))


def channel_norms(weight: torch.Tensor, dim: Dim, norm: Norm = "l1") -> torch.Tensor:
    """Norm of each input column (``dim="input"``, shape ``[in]``) or each output row
    (``dim="output"``, shape ``[out]``) of a ``[out, in]`` weight, in float32."""
    order = {"l1": 1, "l2": 2}[norm]
    reduce_over = 0 if dim == "input" else 1
    return torch.linalg.vector_norm(weight.detach().float(), ord=order, dim=reduce_over)


def select_channels(
    weight: torch.Tensor, dim: Dim, ratio: float, norm: Norm = "l1", multiple_of: int = 1
) -> torch.Tensor:
    """Ascending ``int64`` indices of the channels to keep: the ``kept_count`` channels
    with the largest norm. Ascending order keeps the gather memory-friendly."""
    scores = channel_norms(weight, dim, norm)
    keep = kept_count(scores.numel(), ratio, multiple_of)
    if keep == 0:
        raise ValueError(f"ratio {ratio} would remove all {scores.numel()} {dim} channels")
    top = torch.topk(scores, keep, largest=True, sorted=False).indices
    return torch.sort(top).values.to(torch.int64)


class _ChannelSelection(CompressedLayer):
    """Shared shape of the two wrappers: an inner layer, the kept channel index (a
    persistent ``int64`` buffer named after the direction, so a checkpoint says which
    wrapper to rebuild), and the layer's logical ``in_features`` / ``out_features``."""

    INDEX_BUFFER: str
    paqbench_layer_kind = "structured"
    container = True

    def __init__(
        self, layer: nn.Module, index: torch.Tensor, in_features: int, out_features: int
    ) -> None:
        super().__init__()
        self.layer = layer
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer(self.INDEX_BUFFER, index.to(torch.int64), persistent=True)

    @property
    def index(self) -> torch.Tensor:
        """The kept channels, ascending."""
        return getattr(self, self.INDEX_BUFFER)

    def dequantize(self) -> torch.Tensor:
        """The full-width ``[out_features, in_features]`` weight: the inner layer's
        columns or rows at ``index``, zeros elsewhere."""
        inner = dequantized_weight(self.layer).float()
        full = inner.new_zeros(self.out_features, self.in_features)
        axis = 1 if self.INDEX_BUFFER == InputSelect.INDEX_BUFFER else 0
        return full.index_copy(axis, self.index.to(inner.device), inner)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``F.linear`` with the full-width weight and the inner bias at its channels."""
        bias = getattr(self.layer, "bias", None)
        if bias is not None and self.INDEX_BUFFER == OutputScatter.INDEX_BUFFER:
            bias = bias.new_zeros(self.out_features).index_copy(0, self.index.to(bias.device), bias)
        weight = self.dequantize().to(x.dtype)
        return torch.nn.functional.linear(x, weight, None if bias is None else bias.to(x.dtype))

    def paqbench_numel(self) -> int:
        return as_layer(self.layer).paqbench_numel()

    def paqbench_nonzero(self) -> int:
        layer = self.layer
        if isinstance(layer, CompressedLayer):
            return layer.paqbench_nonzero()
        return sum(int(torch.count_nonzero(p)) for p in layer.parameters())

    def paqbench_storage_bits(self) -> int:
        """The inner layer's bits plus the kept index."""
        layer = self.layer
        inner = (layer.paqbench_storage_bits() if isinstance(layer, CompressedLayer)
                 else sum(p.numel() * p.element_size() * 8 for p in layer.parameters()))
        return inner + self.index.numel() * self.index.element_size() * 8

    def paqbench_macs(self) -> tuple[int, int]:
        layer = self.layer
        if isinstance(layer, CompressedLayer):
            return layer.paqbench_macs()
        return layer.weight.numel(), int(torch.count_nonzero(layer.weight))

    def export_capability(self, target: str) -> Capability:
        """Engines have no gather/scatter layer: written as the full-width dense layer
        (removed channels are zero), whatever format the inner layer has."""
        check_target(target)
        return converted("F16" if target == "gguf" else "float16 tensor",
                         "expanded to the full-width weight (removed channels zero)")


class InputSelect(_ChannelSelection):
    """``y = layer(x[..., index])``: a linear layer that reads only the kept input
    channels. ``in_features`` is the width the model feeds in; the inner layer's is
    ``len(index)``."""

    INDEX_BUFFER = "input_index"
    name = "input-select"
    description = "Structured input pruning: gathers the kept input channels, then runs a smaller inner layer."
    state_marker = INDEX_BUFFER

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.index_select(-1, self.index))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, kept={self.index.numel()}"


class OutputScatter(_ChannelSelection):
    """``y = zeros(out_features); y[..., index] = layer(x)``: a linear layer that computes
    only the kept output channels; removed channels are exactly 0 (bias included)."""

    INDEX_BUFFER = "output_index"
    name = "output-scatter"
    description = "Structured output pruning: a smaller inner layer, scattered into zeros of the full width."
    state_marker = INDEX_BUFFER

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = self.layer(x)
        full = kept.new_zeros(*kept.shape[:-1], self.out_features)
        return full.index_copy(-1, self.index, kept)

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, kept={self.index.numel()}"


_WRAPPERS: dict[str, type[_ChannelSelection]] = {
    InputSelect.INDEX_BUFFER: InputSelect,
    OutputScatter.INDEX_BUFFER: OutputScatter,
}


def prune_channels(
    module: nn.Module, index: torch.Tensor, dim: Dim, shape: tuple[int, int] | None = None
) -> InputSelect | OutputScatter:
    """Keep only the channels ``index`` of ``module`` along ``dim`` and return the
    wrapper that replaces it. A quantized layer is edited in place and wrapped; a dense
    or masked Linear is replaced by a smaller Linear inside the wrapper. ``shape`` is the
    layer's ``[out, in]`` when the caller already knows it (saves a dequantization)."""
    out_features, in_features = shape if shape is not None else dequantized_weight(module).shape
    index = index.to(torch.int64)
    inner = as_layer(module).sliced(index, dim)
    reference = next(iter(inner.parameters()), None) if not isinstance(inner, CompressedLayer) else None
    if reference is not None:
        index = index.to(reference.device)
    wrapper = InputSelect if dim == "input" else OutputScatter
    return wrapper(inner, index, in_features, out_features)


def install(model: nn.Module, name: str, replacement: InputSelect | OutputScatter) -> nn.Module:
    """Put ``replacement`` where ``name`` was and return what now sits there.

    When ``name`` is already the inner layer of a wrapper of the same direction, the
    indices fold into that wrapper (``outer.index[inner.index]``) instead of stacking a
    second gather or scatter."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if child == "layer" and type(parent) is type(replacement):
        folded = parent.index.index_select(0, replacement.index.to(parent.index.device))
        setattr(parent, parent.INDEX_BUFFER, folded)
        parent.layer = replacement.layer
        return parent
    setattr(parent, child, replacement)
    return replacement



def rebuild_structured(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Put empty wrappers of the saved shapes into ``model`` (the original architecture)
    wherever ``state_dict`` holds a kept index, so that ``load_state_dict`` can fill it;
    returns their names. Outer wrappers are rebuilt before inner ones. The inner layer is
    an ``nn.Linear`` placeholder: a quantized one is swapped in afterwards by
    :func:`paqbench.quant.linear.replace_with_quantized` (it finds ``<name>.layer.qmeta``).
    """
    found = [
        (key.rpartition(".")[0], buffer)
        for key in state_dict
        for buffer in _WRAPPERS
        if key.endswith("." + buffer)
    ]
    rebuilt = []
    for name, buffer in sorted(found, key=lambda item: item[0].count(".")):
        current = model.get_submodule(name)
        in_features, out_features = _logical_shape(current)
        index = state_dict[f"{name}.{buffer}"]
        reference = next(current.parameters(), None)
        device = reference.device if reference is not None else index.device
        dtype = reference.dtype if reference is not None else torch.float32
        kept = index.numel()
        if buffer == InputSelect.INDEX_BUFFER:
            inner_in, inner_out = kept, out_features
        else:
            inner_in, inner_out = in_features, kept
        has_bias = f"{name}.layer.bias" in state_dict
        placeholder = nn.utils.skip_init(
            nn.Linear, inner_in, inner_out, bias=has_bias, device=device, dtype=dtype
        )
        wrapper = _WRAPPERS[buffer](placeholder, index.to(device), in_features, out_features)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapper)
        rebuilt.append(name)
    return rebuilt


def _logical_shape(module: nn.Module) -> tuple[int, int]:
    in_features = getattr(module, "in_features", None)
    out_features = getattr(module, "out_features", None)
    if in_features is None or out_features is None:
        raise ValueError(f"cannot tell the width of {type(module).__name__} to rebuild it")
    return int(in_features), int(out_features)
