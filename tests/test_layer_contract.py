"""The compressed-layer contract test (paqbench.testing.check_layer_format) on every
registered built-in layer format, and on a deliberately broken toy format, which it must
catch."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paqbench.layers import UnsupportedLayerError, capabilities, require
from paqbench.layers.contract import (
    EXACT_GRID,
    SLICE_INPUTS,
    ZERO_WEIGHTS,
    CompressedLayer,
    LinearAdapter,
    as_layer,
)
from paqbench.layers.sparsity import get_mask
from paqbench.layers.structured import InputSelect, OutputScatter, prune_channels
from paqbench.quant.embedding import QuantizedEmbedding, TiedQuantizedHead
from paqbench.quant.fp8 import FP8Linear
from paqbench.quant.linear import QuantizedLinear
from paqbench.quant.lut import LUTLinear
from paqbench.quant.nf4 import NF4Linear
from paqbench.quant.quantizer import QuantConfig
from paqbench.quant.vq import VQLinear
from paqbench.quant.w8a8 import Int8DynamicLinear
from paqbench.registry import registered_formats
from paqbench.testing import FormatContractError, check_layer_format
from tests import example_format

IN, OUT, VOCAB = 64, 48, 96


def _linear(bias: bool = True) -> nn.Linear:
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(IN, OUT, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(OUT, IN, generator=generator) * 0.05)
        if bias:
            linear.bias.copy_(torch.randn(OUT, generator=generator) * 0.01)
    return linear


def _table(tied: bool = False) -> QuantizedEmbedding:
    embedding = nn.Embedding(VOCAB, IN)
    with torch.no_grad():
        embedding.weight.copy_(torch.randn(VOCAB, IN, generator=torch.Generator().manual_seed(1)))
    return QuantizedEmbedding.from_embedding(embedding, QuantConfig(4, 32, True), tied=tied)


def _rtn(bits: int, group: int, symmetric: bool, bias: bool = True) -> QuantizedLinear:
    return QuantizedLinear.from_linear(_linear(bias), QuantConfig(bits, group, symmetric))


def _ids(layer: CompressedLayer) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(2))


def _kept(size: int) -> torch.Tensor:
    return torch.arange(0, size, 3)


#: name -> (format class, factory of a filled layer, inputs or None for the default)
CASES: dict[str, tuple[type[CompressedLayer], Callable[[], CompressedLayer], Callable | None]] = {
    "quantized-linear-w4g32-sym": (QuantizedLinear, lambda: _rtn(4, 32, True), None),
    "quantized-linear-w3g16-asym": (QuantizedLinear, lambda: _rtn(3, 16, False), None),
    "quantized-linear-w8-channel": (QuantizedLinear, lambda: _rtn(8, -1, True, bias=False), None),
    "nf4": (NF4Linear, lambda: NF4Linear.from_linear(_linear(), block_size=32), None),
    "lut": (LUTLinear, lambda: LUTLinear.from_linear(_linear(), 3, iterations=3), None),
    "vq": (VQLinear, lambda: VQLinear.from_linear(_linear(), 6, 2, iterations=3), None),
    "int8-dynamic": (Int8DynamicLinear, lambda: Int8DynamicLinear.from_linear(_linear()), None),
    "fp8": (FP8Linear, lambda: FP8Linear.from_linear(_linear()), None),
    "quantized-embedding": (QuantizedEmbedding, _table, _ids),
    "tied-quantized-head": (TiedQuantizedHead, lambda: TiedQuantizedHead(_table(tied=True)), None),
    "input-select": (InputSelect, lambda: prune_channels(_linear(), _kept(IN), "input"), None),
    "output-scatter": (OutputScatter, lambda: prune_channels(_linear(), _kept(OUT), "output"), None),
    "input-select-of-quantized": (
        InputSelect, lambda: prune_channels(_rtn(4, 32, True), _kept(IN), "input"), None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_builtin_format_passes_the_contract(case):
    _, make, inputs = CASES[case]
    check_layer_format(make, inputs)


def test_every_registered_format_has_a_contract_case():
    covered = {cls for cls, _, _ in CASES.values()}
    missing = sorted(name for name, cls in registered_formats().items() if cls not in covered)
    assert not missing, f"registered layer formats without a contract case: {missing}"


# --- a deliberately broken toy format -------------------------------------------------------


class BrokenZeroInt8(example_format.Int8RowLinear):
    """The example format with one broken edit: zero_weights leaves a code at 1, so a
    pruned weight is not exactly zero."""

    name = "broken-int8-row"
    state_marker = "broken_int8row_meta"

    @torch.no_grad()
    def zero_weights(self, keep: torch.Tensor) -> None:
        keep = self._combined_keep(keep)
        self.codes = torch.where(keep, self.codes, torch.ones_like(self.codes))
        from paqbench.layers.sparsity import record_mask

        record_mask(self, keep)


class BrokenSliceInt8(example_format.Int8RowLinear):
    """Slicing inputs forgets the mask: a later pruning pass would revive pruned weights."""

    name = "broken-slice-int8-row"
    state_marker = "broken_slice_int8row_meta"

    @torch.no_grad()
    def select_input_features(self, index: torch.Tensor) -> None:
        index = self._check_index(index, "input")
        self.codes = self.codes.index_select(1, index).contiguous()
        self.in_features = int(index.numel())
        self._write_meta()


def test_the_example_format_passes(registered_example):
    check_layer_format(lambda: example_format.Int8RowLinear.from_linear(_linear()))


@pytest.mark.parametrize(("broken", "message"), [
    (BrokenZeroInt8, "zero_weights: pruned weights are not exactly zero"),
    (BrokenSliceInt8, "select_input_features: the recorded mask"),
])
def test_a_broken_edit_fails_the_contract(broken, message, registered_example):
    with pytest.raises(FormatContractError, match=message):
        check_layer_format(lambda: broken.from_linear(_linear()))


class Undeclared(example_format.Int8RowLinear):
    """Slices outputs, but says it cannot."""

    name = "undeclared-int8-row"
    state_marker = "undeclared_int8row_meta"
    capabilities = frozenset({ZERO_WEIGHTS, SLICE_INPUTS})


def test_an_undeclared_edit_that_runs_fails_the_contract(registered_example):
    with pytest.raises(FormatContractError, match="does not declare 'slice-outputs', yet the edit ran"):
        check_layer_format(lambda: Undeclared.from_linear(_linear()))


def test_an_unregistered_format_fails_save_load():
    with pytest.raises(FormatContractError, match="is not registered"):
        check_layer_format(lambda: example_format.Int8RowLinear.from_linear(_linear()))


# --- capabilities instead of classes ---------------------------------------------------------


def test_methods_ask_capabilities():
    linear = _linear()
    assert isinstance(as_layer(linear), LinearAdapter)
    assert EXACT_GRID in capabilities(QuantizedLinear.from_linear(linear, QuantConfig(4, 32, True)))
    assert EXACT_GRID not in capabilities(NF4Linear.from_linear(linear, block_size=32))
    assert capabilities(nn.Conv1d(2, 2, 1)) == frozenset()
    with pytest.raises(UnsupportedLayerError, match=r"step 2 \(x\) cannot handle layer 'a\.b'.*exact-grid.*'m'"):
        require({"a.b": NF4Linear.from_linear(linear, block_size=32)}, EXACT_GRID, "m", "2 (x)")


def test_the_float_linear_adapter_slices_and_zeroes_exactly():
    linear = _linear()
    keep = torch.rand(OUT, IN, generator=torch.Generator().manual_seed(3)) > 0.5
    as_layer(linear).zero_weights(keep)
    assert torch.equal(get_mask(linear), keep) and bool((linear.weight[~keep] == 0).all())
    small = as_layer(linear).sliced(_kept(IN), "input")
    assert torch.equal(small.weight, linear.weight[:, _kept(IN)])
    assert torch.equal(get_mask(small), keep[:, _kept(IN)])
    x = torch.randn(3, IN)
    assert torch.allclose(small(x[:, _kept(IN)]), F.linear(x[:, _kept(IN)], small.weight, small.bias))


@pytest.fixture
def registered_example():
    """The example format (and the toy formats) registered through the pluggy hook, as an
    installed third-party plugin would be, for the duration of one test."""
    from paqbench.hookspecs import hookimpl
    from paqbench.plugin_manager import get_plugin_manager

    class Toys:
        @hookimpl
        def paqbench_register_layer_formats(self, register):
            for cls in (BrokenZeroInt8, BrokenSliceInt8, Undeclared):
                register(cls)

    pm = get_plugin_manager()
    pm.register(example_format, name="example-format")
    toys = Toys()
    pm.register(toys, name="toy-formats")
    try:
        yield
    finally:
        pm.unregister(toys)
        pm.unregister(example_format)
