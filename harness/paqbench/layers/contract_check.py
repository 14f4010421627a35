"""The contract test every layer format passes (exposed as
:func:`paqbench.testing.check_layer_format`).

It checks what the rest of paqbench relies on, from the format's own declarations:

* declared: a name, a kind, capabilities from :data:`~paqbench.layers.contract.CAPABILITIES`;
* forward: the format's forward (a fast kernel where one applies) agrees with its
  ``reference_forward`` (the float op on ``dequantized_weight()``);
* edits: every declared edit is exact (zeros are exactly 0.0 and the kept weights are
  unchanged; a slice equals the sliced float weight, bias and mask included), and every
  undeclared edit refuses with :class:`UnsupportedLayerError` instead of half-working;
* accounting: numel, nonzero, storage bits and bytes add up from the weight and the
  tensors a checkpoint holds; MACs are consistent;
* save/load: the state dict carries the format's ``state_marker``, ``load_quantized``
  rebuilds the same layer (same weight, same output) from it and from safetensors bytes;
* export: each target's declared capability is well formed and the values it would write
  are the layer's: codes for ``exact`` (decoded back bit for bit), the float weight for
  ``converted``.

A failure raises :class:`FormatContractError` naming the format and the broken promise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from paqbench.export.capability import TARGETS, capability_of
from paqbench.export.gguf_file import blocks
from paqbench.export.grid import grid_of
from paqbench.export.layers import dense_weight
from paqbench.layers.contract import (
    CAPABILITIES,
    EXACT_GRID,
    FLOAT_WEIGHT,
    SLICE_INPUTS,
    SLICE_OUTPUTS,
    ZERO_WEIGHTS,
    CompressedLayer,
)
from paqbench.layers.kinds import UnsupportedLayerError
from paqbench.layers.sparsity import get_mask
from paqbench.quant.linear import load_quantized
from paqbench.registry import registered_formats

Factory = Callable[[], CompressedLayer]


class FormatContractError(AssertionError):
    """A layer format breaks the compressed-layer contract."""


def _fail(layer: nn.Module, what: str) -> FormatContractError:
    return FormatContractError(f"{type(layer).__name__}: {what}")


def _close(layer: nn.Module, got: torch.Tensor, want: torch.Tensor, what: str, rtol: float) -> None:
    if got.shape != want.shape:
        raise _fail(layer, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}")
    scale = float(want.detach().float().abs().max()) if want.numel() else 0.0
    error = float((got.detach().float() - want.detach().float()).abs().max()) if want.numel() else 0.0
    if not math.isfinite(error) or error > rtol * max(scale, 1e-6):
        raise _fail(layer, f"{what}: max difference {error:.3g} exceeds {rtol:g} x {scale:.3g}")


def _equal(layer: nn.Module, got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    if got.shape != want.shape or not torch.equal(got.float(), want.float()):
        raise _fail(layer, f"{what} is not exact")


def _weight(layer: CompressedLayer) -> torch.Tensor:
    return layer.dequantized_weight().detach().float().clone()


def _inputs(layer: CompressedLayer, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(2, 3, layer.in_features, generator=generator)


def check_layer_format(
    make: Factory,
    inputs: Callable[[CompressedLayer], torch.Tensor] | None = None,
    *,
    rtol: float = 2e-3,
    seed: int = 0,
) -> None:
    """Check one layer format. ``make()`` returns a freshly filled layer each call (edits
    change it in place); ``inputs(layer)`` the activations to run it on (default: random
    ``[2, 3, in_features]``). ``rtol`` bounds fast-vs-reference differences relative to the
    largest output. Raises :class:`FormatContractError` on the first broken promise."""
    generator = torch.Generator().manual_seed(seed)
    make_inputs = inputs or (lambda layer: _inputs(layer, generator))
    layer = make()
    _check_declaration(layer)
    _check_forward(layer, make_inputs(layer), rtol)
    _check_accounting(layer)
    _check_save_load(layer, make_inputs(layer), rtol)
    _check_export(layer)
    if EXACT_GRID in layer.capabilities:
        _equal(layer, layer.quantized_weight().dequantize(), _weight(layer), "exact-grid: quantized_weight()")
    if FLOAT_WEIGHT in layer.capabilities:
        _equal(layer, layer.weight.detach(), _weight(layer), "float-weight: weight vs dequantized_weight()")
    edits = {ZERO_WEIGHTS: _check_zero_weights, SLICE_INPUTS: _check_slice, SLICE_OUTPUTS: _check_slice}
    for capability, check in edits.items():
        fresh = make()
        if capability in fresh.capabilities:
            check(fresh, capability, make_inputs, rtol, generator)
        else:
            _check_refused(fresh, capability)


def _check_declaration(layer: CompressedLayer) -> None:
    if not isinstance(layer, CompressedLayer):
        raise FormatContractError(f"{type(layer).__name__} is not a paqbench.CompressedLayer")
    if not layer.name or not layer.paqbench_layer_kind:
        raise _fail(layer, "declares no `name` or no `paqbench_layer_kind`")
    unknown = set(layer.capabilities) - set(CAPABILITIES)
    if unknown:
        raise _fail(layer, f"declares unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
    if layer.state_marker is None and layer.stored_tensors() and not layer.container:
        raise _fail(layer, "stores tensors but declares no `state_marker`, so it cannot be loaded back")


def _check_forward(layer: CompressedLayer, x: torch.Tensor, rtol: float) -> None:
    with torch.no_grad():
        out = layer(x)
        reference = layer.reference_forward(x)
    _close(layer, out, reference, f"forward (kernel {layer.kernel!r}) vs reference_forward", rtol)


def _check_accounting(layer: CompressedLayer) -> None:
    weight = _weight(layer)
    bias = layer._bias()
    bias_numel = bias.numel() if bias is not None else 0
    bias_nonzero = int(torch.count_nonzero(bias)) if bias is not None else 0
    if layer.container:
        return  # a wrapper's accounting is its inner layer's, which is checked on its own
    if layer.stored_tensors() or layer.paqbench_numel():
        if layer.paqbench_numel() != weight.numel() + bias_numel:
            raise _fail(layer, f"paqbench_numel() {layer.paqbench_numel()} != weights {weight.numel()} + bias")
        if layer.paqbench_nonzero() != int(torch.count_nonzero(weight)) + bias_nonzero:
            raise _fail(layer, f"paqbench_nonzero() {layer.paqbench_nonzero()} != nonzero entries of the weight")
    stored = sum(t.numel() * t.element_size() * 8 for t in layer.state_dict().values())
    if layer.paqbench_storage_bits() != stored:
        raise _fail(layer, f"paqbench_storage_bits() {layer.paqbench_storage_bits()} != {stored} bits in its state")
    if layer.paqbench_storage_bytes() != math.ceil(stored / 8):
        raise _fail(layer, "paqbench_storage_bytes() does not match its bits")
    dense, nonzero = layer.paqbench_macs()
    if not 0 <= nonzero <= dense:
        raise _fail(layer, f"paqbench_macs() gives nonzero {nonzero} outside [0, dense {dense}]")


def _holder(layer: CompressedLayer) -> nn.Module:
    """A one-layer model whose placeholder ``load_quantized`` replaces: a full-width
    ``nn.Linear`` for a wrapper (rebuilt from its index), any module for a format."""
    holder = nn.Module()
    shape = (layer.in_features, layer.out_features) if layer.container else (1, 1)
    holder.unit = nn.Linear(*shape)
    return holder


def _check_save_load(layer: CompressedLayer, x: torch.Tensor, rtol: float) -> None:
    from safetensors.torch import load as load_bytes
    from safetensors.torch import save as save_bytes


    if not layer.stored_tensors() and not layer.container:
        return  # holds no tensors (a tied head): nothing of its own to save
    state = {f"unit.{key}": value.detach().clone() for key, value in layer.state_dict().items()}
    if f"unit.{layer.state_marker}" not in state:
        raise _fail(layer, f"its state dict has no {layer.state_marker!r} marker")
    if type(layer) not in registered_formats().values():
        raise _fail(layer, "is not registered (paqbench_register_layer_formats), so load_quantized cannot rebuild it")
    for source, loaded_state in (("state dict", state), ("safetensors", load_bytes(save_bytes(state)))):
        holder = load_quantized(_holder(layer), loaded_state)
        clone = holder.unit
        if type(clone) is not type(layer):
            raise _fail(layer, f"load_quantized ({source}) rebuilt a {type(clone).__name__}")
        _equal(layer, _weight(clone), _weight(layer), f"save/load ({source}): the weight")
        with torch.no_grad():
            _close(layer, clone(x), layer(x), f"save/load ({source}): the output", rtol)


def _check_export(layer: CompressedLayer) -> None:
    for target in TARGETS:
        cell = capability_of(layer, target)
        if cell.level not in ("exact", "converted", "unavailable"):
            raise _fail(layer, f"export to {target}: unknown level {cell.level!r}")
        if cell.level == "unavailable":
            if not cell.reason:
                raise _fail(layer, f"export to {target}: unavailable without a reason")
            continue
        if not cell.how:
            raise _fail(layer, f"export to {target}: {cell.level} without saying how")
        _equal(layer, dense_weight(layer), _weight(layer), f"export to {target}: the float weight written")
        if cell.level == "exact":
            _equal(layer, _exported_values(layer, target, cell.how), _weight(layer),
                   f"export to {target} ({cell.how}): values decoded from the written codes")


def _exported_values(layer: CompressedLayer, target: str, how: str) -> torch.Tensor:
    """The weight decoded from what the exporter writes for an ``exact`` layer."""
    if target == "compressed-tensors" and how.startswith("float-quantized"):
        from paqbench.export.compressed.float8 import fp8_scheme, fp8_tensors  # lazy: imports compressed_tensors

        scheme = fp8_scheme(layer)
        if scheme is None:
            raise _fail(layer, f"export to compressed-tensors declares exact {how!r} but has no E4M3 weight")
        tensors = fp8_tensors(layer, scheme)
        return tensors["weight"].float() * tensors["weight_scale"].float()
    grid = grid_of(layer)
    if target == "gguf":
        import gguf


        kind = next((k for k in ("Q4_0", "Q8_0") if k in how), None)
        encode = {"Q4_0": blocks.q4_0, "Q8_0": blocks.q8_0}.get(kind or "")
        if encode is None:
            raise _fail(layer, f"export to gguf declares exact {how!r}, a block type the check does not know")
        raw = encode(grid)
        values = gguf.quants.dequantize(raw, getattr(gguf.GGMLQuantizationType, kind))
        return torch.from_numpy(values.reshape(grid.codes.shape).copy())
    from paqbench.export.compressed.packed import packed_tensors, scheme_for  # lazy: imports compressed_tensors

    scheme = scheme_for(grid)
    if scheme is None:
        raise _fail(layer, "export to compressed-tensors declares exact but no scheme fits its groups")
    tensors = packed_tensors(grid, scheme)
    return _unpack_compressed(tensors, grid.bits, scheme.group_size or grid.codes.shape[1])


def _unpack_compressed(tensors: dict[str, torch.Tensor], bits: int, group: int) -> torch.Tensor:
    try:
        from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    except ImportError:
        from compressed_tensors.compressors.quantized_compressors.pack_quantized import unpack_from_int32
    shape = torch.Size(tensors["weight_shape"].tolist())
    q = unpack_from_int32(tensors["weight_packed"], bits, shape).float()
    columns = torch.arange(shape[1]) // group
    scale = tensors["weight_scale"].float()[:, columns]
    zero = tensors.get("weight_zero_point")
    if zero is not None:
        zero = unpack_from_int32(zero, bits, torch.Size([shape[0], scale.shape[1]]), packed_dim=0).float()
        return (q - zero[:, columns]) * scale
    return q * scale


def _check_zero_weights(layer, capability, make_inputs, rtol, generator) -> None:
    before = _weight(layer)
    keep = torch.rand(before.shape, generator=generator) > 0.5
    layer.zero_weights(keep)
    after = _weight(layer)
    if bool((after[~keep] != 0).any()):
        raise _fail(layer, "zero_weights: pruned weights are not exactly zero")
    _equal(layer, after[keep], before[keep], "zero_weights: the kept weights")
    mask = get_mask(layer)
    if mask is None or not torch.equal(mask.cpu(), keep):
        raise _fail(layer, "zero_weights: the keep-mask is not recorded as paqbench_mask")
    layer.zero_weights(torch.ones_like(keep))  # a later pass keeps earlier zeros
    if bool((_weight(layer)[~keep] != 0).any()) or not torch.equal(get_mask(layer).cpu(), keep):
        raise _fail(layer, "zero_weights: a second pass brought pruned weights back")
    _check_forward(layer, make_inputs(layer), rtol)


def _check_slice(layer, capability, make_inputs, rtol, generator) -> None:
    inputs = capability == SLICE_INPUTS
    axis = 1 if inputs else 0
    if ZERO_WEIGHTS in layer.capabilities:  # a recorded mask must be sliced along
        layer.zero_weights(torch.rand(tuple(_weight(layer).shape), generator=generator) > 0.25)
    before, mask, bias = _weight(layer), get_mask(layer), layer._bias()
    size = before.shape[axis]
    index = torch.sort(torch.randperm(size, generator=generator)[: max(1, size * 2 // 3)]).values
    edit = layer.select_input_features if inputs else layer.select_output_features
    edit(index)
    name = "select_input_features" if inputs else "select_output_features"
    _equal(layer, _weight(layer), before.index_select(axis, index), f"{name}: the weight")
    width = layer.in_features if inputs else layer.out_features
    if width != index.numel():
        raise _fail(layer, f"{name}: {'in' if inputs else 'out'}_features is {width}, not {index.numel()}")
    if mask is not None:
        _equal(layer, get_mask(layer).cpu(), mask.cpu().index_select(axis, index), f"{name}: the recorded mask")
    if bias is not None and not inputs:
        _equal(layer, layer._bias().detach(), bias.detach().index_select(0, index), f"{name}: the bias")
    _check_forward(layer, make_inputs(layer), rtol)


def _check_refused(layer: CompressedLayer, capability: str) -> None:
    """An edit the format does not declare must refuse, not half-work."""
    shape = (layer.out_features, layer.in_features) if hasattr(layer, "in_features") else (1, 1)
    calls = {
        ZERO_WEIGHTS: lambda: layer.zero_weights(torch.ones(shape, dtype=torch.bool)),
        SLICE_INPUTS: lambda: layer.select_input_features(torch.arange(1)),
        SLICE_OUTPUTS: lambda: layer.select_output_features(torch.arange(1)),
    }
    try:
        calls[capability]()
    except UnsupportedLayerError:
        return
    except Exception as exc:  # any other outcome is the failure reported
        raise _fail(layer, f"does not declare {capability!r}, and the edit raised {type(exc).__name__}: {exc}") from exc
    raise _fail(layer, f"does not declare {capability!r}, yet the edit ran: declare it or leave it refused")
