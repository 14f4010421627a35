"""The compressed-layer contract: what every layer format offers, in one place.

A format is a subclass of :class:`CompressedLayer` (an ``nn.Module``). It declares its
``name`` (the registry's), its ``paqbench_layer_kind`` (what methods ``accept``), the
``capabilities`` a method may ask for, and the checkpoint ``state_marker`` that rebuilds
it on load; it implements ``dequantize()`` and ``empty_from_state()``, the edits it
declares, and may override the accounting (numel, nonzero, bits, bytes, MACs per token),
``export_capability`` and ``select_kernel``. Everything else is shared here, so a new
format writes only its layout: mask bookkeeping and shape checks, the structured edits'
common part (``_select_rows`` / ``_select_columns`` slice the named per-row / per-column
tensors with the bias, mask and width; ``_compact`` drops table entries no index uses),
the layout marker (``meta_fields``: written after every edit, read back on load),
carrying bias and mask over from the replaced layer, format floats kept through
``model.to(dtype)``, and default accounting from the stored tensors.

A plain ``nn.Linear`` (dense, or pruned with a recorded mask) is not a subclass (it is
torch's); :func:`as_layer` gives it the same face through :class:`LinearAdapter`, so a
method handles every target through one set of calls and asks capabilities, never classes:

* :data:`ZERO_WEIGHTS` ``zero_weights(keep)`` sets weights to exactly 0.0 and records the mask;
* :data:`SLICE_INPUTS` / :data:`SLICE_OUTPUTS` ``select_input_features(index)`` /
  ``select_output_features(index)`` keep columns / rows (codes, scales, bias, mask together);
* :data:`EXACT_GRID` ``quantized_weight()`` returns codes, scales, zeros and group index of
  an integer grid that a method can requantize onto exactly (SparseGPT after GPTQ);
* :data:`FLOAT_WEIGHT` a float ``weight`` parameter that a method may overwrite or train.

Formats register through the ``paqbench_register_layer_formats`` hook (built-ins in
``paqbench_plugins.formats``), exactly like methods; ``paqbench.registry.registered_formats``
reads them for loading (there, not here: the registry checks plugins against this base
class, so this module must not import the registry).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, TypedDict

import torch
from torch import nn

from paqbench.export.capability import check_target, unavailable
from paqbench.layers.index import check_feature_index
from paqbench.layers.kinds import UnsupportedLayerError, layer_kind
from paqbench.layers.sparsity import get_mask, record_mask, set_mask

if TYPE_CHECKING:
    from paqbench.export.capability import Capability

Dim = Literal["input", "output"]

ZERO_WEIGHTS = "zero-weights"
SLICE_INPUTS = "slice-inputs"
SLICE_OUTPUTS = "slice-outputs"
EXACT_GRID = "exact-grid"
FLOAT_WEIGHT = "float-weight"

#: Every capability a method can ask for, with what it promises (used in error messages).
CAPABILITIES: dict[str, str] = {
    ZERO_WEIGHTS: "zero_weights(keep): set single weights to exactly zero",
    SLICE_INPUTS: "select_input_features(index): keep a subset of input columns",
    SLICE_OUTPUTS: "select_output_features(index): keep a subset of output rows",
    EXACT_GRID: "quantized_weight(): an integer grid to requantize onto exactly",
    FLOAT_WEIGHT: "a float weight a method may overwrite or train",
}

#: What a float ``nn.Linear`` offers through :class:`LinearAdapter`.
LINEAR_CAPABILITIES = frozenset({ZERO_WEIGHTS, SLICE_INPUTS, SLICE_OUTPUTS, FLOAT_WEIGHT})

REFERENCE_KERNEL = "reference"


class LayerOptions(TypedDict, total=False):
    """The constructor options every linear format takes after its layout (defaults: no
    bias, the default device, float32), as ``**options: Unpack[LayerOptions]``; the
    constructor ends in :meth:`CompressedLayer._init_layout`, which applies them."""

    bias: bool  # a zero [out] bias parameter (``from_*`` then copies the real one in)
    device: torch.device | str | None
    dtype: torch.dtype  # of the bias, and of the activations a fast path is chosen for


class CompressedLayer(nn.Module):
    """Base class of every compressed layer format (see the module docstring)."""

    #: The format's registry name (``paqbench plugins`` lists it).
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: The layer kind methods ``accept`` (``quantized`` for every quantized linear format).
    paqbench_layer_kind: ClassVar[str] = "quantized"
    #: What methods may ask of this format (:data:`CAPABILITIES`).
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: A checkpoint tensor ``<layer name>.<state_marker>`` marks a layer of this format.
    state_marker: ClassVar[str | None] = None
    #: True for a wrapper around another layer (structured pruning): not a target, and its
    #: accounting is its inner layer's, counted there.
    container: ClassVar[bool] = False
    #: The forward path in use: "reference" (dequantize, then the float op) or a kernel's name
    #: (None for a layer with no matmul path, such as a token table).
    kernel: str | None = REFERENCE_KERNEL
    #: The layout the ``state_marker`` buffer holds, as int32 in this order (ints and
    #: bools; a format with another kind of field encodes it in ``_meta_values`` /
    #: ``_read_meta``): rewritten after every edit, read back after a load.
    meta_fields: ClassVar[tuple[str, ...]] = ()
    #: Float buffers that are the stored format (scales, tables): ``model.to(dtype)`` moves
    #: them but keeps their dtype (bfloat16 scales would lose bits the format stored).
    format_floats: ClassVar[tuple[str, ...]] = ()
    #: The attributes ``repr`` shows, before ``bias`` and ``kernel`` (empty: torch's repr).
    repr_fields: ClassVar[tuple[str, ...]] = ()

    in_features: int
    out_features: int

    @classmethod
    def summary(cls) -> str:
        text = (cls.description or cls.__doc__ or "").strip()
        return text.split("\n\n")[0].replace("\n", " ")

    # ------------------------------------------------------------------ reading

    def dequantize(self) -> torch.Tensor:
        """The float32 weight ``[out, in]`` the stored format stands for."""
        raise NotImplementedError(f"{type(self).__name__} does not implement dequantize()")

    def dequantized_weight(self) -> torch.Tensor:
        """The float ``[out, in]`` weight this layer computes with (the contract's name)."""
        return self.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reference path; a format with a fast path overrides it."""
        return self.reference_forward(x)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """What the forward must compute (the contract test compares every fast path with
        it): the float op on ``dequantized_weight()``. A format that also quantizes its
        activations overrides it to do the same in float."""
        bias = self._bias()
        weight = self.dequantized_weight().to(device=x.device, dtype=x.dtype)
        return torch.nn.functional.linear(x, weight, None if bias is None else bias.to(x.dtype))

    def export_capability(self, target: str) -> Capability:
        """How this layer goes into export ``target``; a format that does not say is not
        exported (never guessed)."""
        check_target(target)
        return unavailable(f"{type(self).__name__} declares no export capability")

    def select_kernel(self, device: torch.device | str, dtype: torch.dtype) -> None:
        """Choose the forward path for activations of ``dtype`` on ``device`` (formats
        without fast paths keep the reference path)."""
        self.kernel = REFERENCE_KERNEL

    # ------------------------------------------------------------------ edits

    def _refuse(self, capability: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(
            f"{type(self).__name__} does not offer {capability!r} ({CAPABILITIES[capability]})"
        )

    def zero_weights(self, keep: torch.Tensor) -> None:
        """Where ``keep`` is False the weight becomes exactly 0.0; the mask is recorded."""
        raise self._refuse(ZERO_WEIGHTS)

    def select_input_features(self, index: torch.Tensor) -> None:
        """Keep the input columns ``index`` (in that order), in place."""
        raise self._refuse(SLICE_INPUTS)

    def select_output_features(self, index: torch.Tensor) -> None:
        """Keep the output rows ``index`` (in that order), in place."""
        raise self._refuse(SLICE_OUTPUTS)

    def sliced(self, index: torch.Tensor, dim: Dim) -> nn.Module:
        """This layer keeping ``index`` along ``dim``: edited in place and returned."""
        if dim == "input":
            self.select_input_features(index)
        else:
            self.select_output_features(index)
        return self

    # ------------------------------------------------------------------ shared edit helpers

    def _storage_device(self) -> torch.device:
        tensor = next(iter(self.buffers(recurse=False)), None)
        if tensor is None:
            tensor = next(iter(self.parameters(recurse=False)), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def _combined_keep(self, keep: torch.Tensor) -> torch.Tensor:
        """``keep`` checked against the weight's shape, as bool on the layer's device,
        ANDed with the recorded mask (a weight pruned once stays pruned)."""
        if tuple(keep.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"mask shape {tuple(keep.shape)} does not match weight {(self.out_features, self.in_features)}"
            )
        keep = keep.to(device=self._storage_device(), dtype=torch.bool)
        previous = get_mask(self)
        if previous is not None:
            keep = keep & previous.to(keep.device)
        return keep

    def _check_index(self, index: torch.Tensor, dim: Dim) -> torch.Tensor:
        size = self.in_features if dim == "input" else self.out_features
        return check_feature_index(index, size, dim, self._storage_device())

    def _slice_mask(self, index: torch.Tensor, dim: Dim | int) -> None:
        """Slice the recorded mask with a structured edit (columns: ``"input"`` or 1;
        rows: ``"output"`` or 0)."""
        mask = get_mask(self)
        if mask is not None:
            axis = dim if isinstance(dim, int) else (1 if dim == "input" else 0)
            record_mask(self, mask.index_select(axis, index.to(mask.device)))

    def _slice_bias(self, index: torch.Tensor) -> None:
        bias = getattr(self, "bias", None)
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().index_select(0, index.to(bias.device)),
                                     requires_grad=bias.requires_grad)

    def _select_rows(self, index: torch.Tensor, names: Iterable[str] = ()) -> torch.Tensor:
        """The output slice every format shares: keep the rows ``index`` (in that order) of
        the named per-row tensors (None ones skipped), then :meth:`_finish_slice`. Returns
        the checked index, for tensors that need more than a row selection."""
        index = self._check_index(index, "output")
        self._index_select(names, 0, index)
        self._finish_slice(index, "output")
        return index

    def _select_columns(self, index: torch.Tensor, names: Iterable[str] = ()) -> torch.Tensor:
        """The input slice of unpacked per-column tensors: keep the columns ``index`` of
        each named one, then :meth:`_finish_slice`; returns the checked index."""
        index = self._check_index(index, "input")
        self._index_select(names, 1, index)
        self._finish_slice(index, "input")
        return index

    def _index_select(self, names: Iterable[str], dim: int, index: torch.Tensor) -> None:
        for name in names:
            tensor = getattr(self, name)
            if tensor is not None:
                setattr(self, name, tensor.index_select(dim, index).contiguous())

    def _finish_slice(self, index: torch.Tensor, dim: Dim) -> None:
        """What follows every structured edit: the new width, the recorded mask (and for
        rows the bias) sliced along, then :meth:`_invalidate`."""
        if dim == "output":
            self._slice_bias(index)
            self.out_features = int(index.numel())
        else:
            self.in_features = int(index.numel())
        self._slice_mask(index, dim)
        self._invalidate()

    def _compact(self, index_name: str, **tables: int) -> torch.Tensor:
        """Drop the entries of ``tables`` (buffer name -> the dim indexed by ``index_name``)
        that the index buffer ``index_name`` no longer points at, and renumber the index
        (int32). Returns the kept entries (ascending), for packed tables to follow."""
        used, inverse = torch.unique(getattr(self, index_name).long(), return_inverse=True)
        setattr(self, index_name, inverse.to(torch.int32))
        for name, dim in tables.items():
            setattr(self, name, getattr(self, name).index_select(dim, used).contiguous())
        return used

    def _init_layout(
        self, bias: bool = False, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> None:
        """The end of a format's constructor, after its own buffers: the ``state_marker``
        buffer holding the layout, then the bias."""
        self._register_meta()
        self._init_bias(bias, device, dtype)

    def _init_bias(self, bias: bool, device: torch.device | str | None, dtype: torch.dtype) -> None:
        """A zero ``[out_features]`` bias parameter of ``dtype`` (or a registered None)."""
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_features, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)

    @staticmethod
    def _options_for(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype | None) -> LayerOptions:
        """The :class:`LayerOptions` of a layer built from ``weight`` and ``bias``: on the
        weight's device, in ``dtype`` (default: the bias's, else float32)."""
        return {"bias": bias is not None, "device": weight.device,
                "dtype": dtype or (bias.dtype if bias is not None else torch.float32)}

    def _carry_over(self, bias: torch.Tensor | None, mask: torch.Tensor | None) -> None:
        """Take the replaced layer's bias (a copy, same dtype and ``requires_grad``) and
        recorded pruning mask onto this layer's device, so later steps keep its zeros."""
        device = self._storage_device()
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone().to(device), requires_grad=bias.requires_grad)
        if mask is not None:
            record_mask(self, mask.to(device=device, dtype=torch.bool).clone())

    @classmethod
    def _empty_like(cls, linear: nn.Linear, *layout: Any, **options: Any) -> Self:
        """An empty layer of ``linear``'s shape, bias, device and dtype (``layout``:
        the format's own constructor arguments), for ``from_linear`` to fill."""
        weight = linear.weight
        return cls(linear.in_features, linear.out_features, *layout, bias=linear.bias is not None,
                   device=weight.device, dtype=weight.dtype, **options)

    # ------------------------------------------------------------------ layout marker

    def _meta_values(self) -> list[int]:
        return [int(getattr(self, field)) for field in self.meta_fields]

    def _read_meta(self, values: list[int]) -> None:
        for field, value in zip(self.meta_fields, values, strict=True):
            setattr(self, field, bool(value) if isinstance(getattr(self, field), bool) else value)

    def _register_meta(self) -> None:
        """Register the ``state_marker`` buffer (after the format's other buffers)."""
        self.register_buffer(self.state_marker, self._meta_tensor())

    def _meta_tensor(self) -> torch.Tensor:
        return torch.tensor(self._meta_values(), dtype=torch.int32, device=self._storage_device())

    def _write_meta(self) -> None:
        if self.state_marker is not None and self.meta_fields:
            setattr(self, self.state_marker, self._meta_tensor())

    def _invalidate(self) -> None:
        """After every edit or load: the layout marker is rewritten (a format with cached
        fast paths also forgets them here)."""
        self._write_meta()

    @classmethod
    def _saved_meta(cls, state_dict: Mapping[str, torch.Tensor], name: str) -> list[int]:
        """The layout saved under ``name`` (``empty_from_state`` reads it)."""
        return [int(v) for v in state_dict[f"{name}.{cls.state_marker}"].tolist()]

    @staticmethod
    def _saved_bias(state_dict: Mapping[str, torch.Tensor], name: str) -> dict[str, Any]:
        """The ``bias=`` and ``dtype=`` constructor arguments for the bias saved under ``name``."""
        bias = state_dict.get(f"{name}.bias")
        return {"bias": bias is not None, "dtype": bias.dtype if bias is not None else torch.float32}

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:
        """After loading, the Python-side layout follows the loaded marker."""
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.state_marker is not None and self.meta_fields:
            self._read_meta([int(v) for v in getattr(self, self.state_marker).tolist()])
            self._invalidate()

    def _apply(self, fn: Any, recurse: bool = True) -> CompressedLayer:
        """Device moves apply to everything; a dtype cast leaves :attr:`format_floats`."""
        kept = {name: getattr(self, name) for name in self.format_floats if getattr(self, name, None) is not None}
        result = super()._apply(fn, recurse)
        for name, tensor in kept.items():
            setattr(self, name, tensor.to(device=getattr(self, name).device))
        return result

    def extra_repr(self) -> str:
        if not self.repr_fields:
            return super().extra_repr()
        fields = [f"{field}={getattr(self, field)}" for field in self.repr_fields]
        return ", ".join([*fields, f"bias={self._bias() is not None}", f"kernel={self.kernel}"])

    # ------------------------------------------------------------------ accounting

    def _bias(self) -> torch.Tensor | None:
        bias = getattr(self, "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    def paqbench_numel(self) -> int:
        """Logical parameters: the weights this layer stands for, plus the bias."""
        bias = self._bias()
        return self.out_features * self.in_features + (bias.numel() if bias is not None else 0)

    @torch.no_grad()
    def paqbench_nonzero(self) -> int:
        """Weights that dequantize to a nonzero value, plus nonzero bias entries."""
        bias = self._bias()
        return self._nonzero_weights() + (int(torch.count_nonzero(bias)) if bias is not None else 0)

    def _nonzero_weights(self) -> int:
        """Weights that dequantize to a nonzero value (a format may count its codes instead)."""
        return int(torch.count_nonzero(self.dequantize()))

    def stored_tensors(self) -> list[torch.Tensor]:
        """What a checkpoint of this layer holds: its persistent buffers and parameters."""
        persistent = [t for n, t in self.named_buffers(recurse=False) if n not in self._non_persistent_buffers_set]
        return persistent + list(self.parameters(recurse=False))

    def paqbench_storage_bits(self) -> int:
        """Bits actually stored (every tensor a checkpoint of this layer holds)."""
        return sum(t.numel() * t.element_size() * 8 for t in self.stored_tensors())

    def paqbench_storage_bytes(self) -> int:
        return math.ceil(self.paqbench_storage_bits() / 8)

    def paqbench_macs(self) -> tuple[int, int]:
        """(dense, nonzero) multiply-accumulates per token, as the params metric has always
        counted a compressed layer: its logical and its nonzero parameters."""
        return self.paqbench_numel(), self.paqbench_nonzero()

    # ------------------------------------------------------------------ save / load

    @classmethod
    def empty_from_state(
        cls, state_dict: Mapping[str, torch.Tensor], name: str, device: torch.device
    ) -> CompressedLayer:
        """An empty layer of the layout saved under ``name`` (``load_state_dict`` fills it)."""
        raise NotImplementedError(f"{cls.__name__} does not implement empty_from_state()")

    @classmethod
    def after_load(cls, model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Called once per load after every layer is rebuilt, before the tensors load:
        a format that spans modules reconnects them here (a tied LM head)."""


class LinearAdapter:
    """A float ``nn.Linear`` (dense, or pruned with a recorded mask) seen through the
    contract: the same calls as a :class:`CompressedLayer`, answered from its weight."""

    capabilities = LINEAR_CAPABILITIES

    def __init__(self, linear: nn.Linear) -> None:
        self.module = linear

    def dequantized_weight(self) -> torch.Tensor:
        """The weight (detached; a view of the parameter, do not edit it)."""
        return self.module.weight.detach()

    def zero_weights(self, keep: torch.Tensor) -> None:
        set_mask(self.module, keep)

    @torch.no_grad()
    def sliced(self, index: torch.Tensor, dim: Dim) -> nn.Linear:
        """A new, smaller ``nn.Linear`` keeping the columns or rows ``index`` (its bias and
        recorded mask sliced with it, so later steps keep its zeros)."""
        linear = self.module
        weight = linear.weight
        index = index.to(device=weight.device, dtype=torch.int64)
        axis = 1 if dim == "input" else 0
        new_weight = weight.index_select(axis, index)
        bias = linear.bias
        if bias is not None and dim == "output":
            bias = bias.index_select(0, index)
        small = nn.utils.skip_init(
            nn.Linear, new_weight.shape[1], new_weight.shape[0], bias=bias is not None,
            device=weight.device, dtype=weight.dtype,
        )
        small.weight.copy_(new_weight)
        small.weight.requires_grad_(weight.requires_grad)
        if bias is not None:
            small.bias.copy_(bias)
            small.bias.requires_grad_(linear.bias.requires_grad)
        mask = get_mask(linear)
        if mask is not None:
            set_mask(small, mask.index_select(axis, index))
        return small

    def paqbench_numel(self) -> int:
        return self.module.weight.numel() + (self.module.bias.numel() if self.module.bias is not None else 0)


def as_layer(module: nn.Module, name: str = "", step: str | None = None) -> CompressedLayer | LinearAdapter:
    """``module`` through the contract; anything that is neither a format nor a float
    ``nn.Linear`` raises :class:`UnsupportedLayerError` naming the layer and the step."""
    if isinstance(module, CompressedLayer):
        return module
    if isinstance(module, nn.Linear):
        return LinearAdapter(module)
    where = f"step {step}" if step else "paqbench"
    raise UnsupportedLayerError(
        f"{where} cannot handle layer {name!r}: it is {layer_kind(module)} ({type(module).__name__}), "
        "which implements no paqbench layer format. Reorder the pipeline, or narrow the method's `targets`."
    )


def capabilities(module: nn.Module) -> frozenset[str]:
    """What ``module`` offers (empty for a module outside the contract)."""
    if isinstance(module, CompressedLayer):
        return module.capabilities
    if isinstance(module, nn.Linear):
        return LINEAR_CAPABILITIES
    return frozenset()


def dequantized_weight(module: nn.Module, name: str = "", step: str | None = None) -> torch.Tensor:
    """The float ``[out, in]`` weight any layer computes with (the one "float weight" of
    the code base)."""
    return as_layer(module, name, step).dequantized_weight()


def require(
    modules: Mapping[str, nn.Module], needs: str | Iterable[str], method: str, step: str | None
) -> None:
    """Refuse up front (before any work) with :class:`UnsupportedLayerError` naming the
    first layer that lacks ``needs``: one capability, or an iterable of alternatives
    (any one suffices)."""
    options = (needs,) if isinstance(needs, str) else tuple(needs)
    for name, module in modules.items():
        offered = capabilities(module)
        if not any(option in offered for option in options):
            where = f"step {step}" if step else f"method {method!r}"
            wanted = " or ".join(f"{o} ({CAPABILITIES[o]})" for o in options)
            raise UnsupportedLayerError(
                f"{where} cannot handle layer {name!r}: {type(module).__name__} ({layer_kind(module)}) "
                f"does not offer {wanted}, which {method!r} needs. "
                "Reorder the pipeline, or narrow the method's `targets`."
            )


def accounted_layers(model: nn.Module) -> list[CompressedLayer]:
    """The format layers whose accounting counts (containers excluded: their inner
    layers are counted themselves)."""
    return [m for m in model.modules() if isinstance(m, CompressedLayer) and not m.container]


def kernels_in_use(model: nn.Module) -> dict[str, int]:
    """How many format layers run on each forward path (``{"int4-cpu": 210,
    "reference": 1}``), from their ``kernel``. Read it after a forward: a layer chooses its
    path on the first call with a given activation dtype."""
    counts: dict[str, int] = {}
    for module in accounted_layers(model):
        if isinstance(module.kernel, str):  # None: no matmul path (a token table's gather)
            counts[module.kernel] = counts.get(module.kernel, 0) + 1
    return dict(sorted(counts.items()))
