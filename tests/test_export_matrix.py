"""Every built-in layer format x every export target: exported and round-tripped in its
engine, or unavailable with a reason. A format class that no builder covers fails
``test_every_format_has_a_builder``, so a new format cannot skip the matrix."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from paqbench.export import TARGETS, capability_of
from paqbench.export.layers import export_units
from paqbench.export.roundtrip.compare import Tolerance
from paqbench.export.run import export_model
from paqbench.layers.sparsity import get_mask, set_mask
from paqbench.layers.structured import InputSelect, OutputScatter, install, prune_channels
from paqbench.models.embedded import byte_tokenizer, tiny_random_llama
from paqbench.quant.embedding import QuantizedEmbedding, TiedQuantizedHead, tie_quantized_head
from paqbench.quant.fp8 import FP8Linear
from paqbench.quant.linear import QuantizedLinear, replace_module
from paqbench.quant.lut import LUTLinear
from paqbench.quant.nf4 import NF4Linear
from paqbench.quant.quantizer import QuantConfig
from paqbench.quant.vq import VQLinear
from paqbench.quant.w8a8 import Int8DynamicLinear
from paqbench.registry import registered_formats
from tests.export_helpers import decoder_linears, needs_compressed_tensors, tiny_quantized, window_ids


def _each_linear(make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    model = tiny_random_llama(seed=0)
    for name, linear in decoder_linears(model):
        replace_module(model, name, make(linear))
    return model


def _embedding(tied: bool) -> nn.Module:
    model = tiny_random_llama(seed=0, tie_word_embeddings=tied)
    table = QuantizedEmbedding.from_embedding(model.model.embed_tokens, QuantConfig(4, 32, True), tied=tied)
    replace_module(model, "model.embed_tokens", table)
    if tied:
        tie_quantized_head(model, table)
    return model


def _wrapped(dim: str) -> nn.Module:
    model = tiny_random_llama(seed=0)
    for name, linear in decoder_linears(model):
        size = linear.in_features if dim == "input" else linear.out_features
        index = torch.arange(0, size, 2)  # keep every other channel
        install(model, name, prune_channels(linear, index, dim))
    return model


def _masked() -> nn.Module:
    model = tiny_random_llama(seed=0)
    for _, linear in decoder_linears(model):
        set_mask(linear, torch.rand(linear.weight.shape, generator=torch.Generator().manual_seed(1)) > 0.5)
    return model


#: One builder per layer format: a tiny Llama whose layers use it.
BUILDERS: dict[str, tuple[type[nn.Module], Callable[[], nn.Module]]] = {
    "QuantizedLinear": (QuantizedLinear, lambda: tiny_quantized(4, 32, True)),
    "QuantizedLinear-asym-g64": (QuantizedLinear, lambda: tiny_quantized(4, 64, False)),
    "QuantizedLinear-3bit": (QuantizedLinear, lambda: tiny_quantized(3, 32, True)),
    "NF4Linear": (NF4Linear, lambda: _each_linear(lambda lin: NF4Linear.from_linear(lin, block_size=32))),
    "LUTLinear": (LUTLinear, lambda: _each_linear(lambda lin: LUTLinear.from_linear(lin, 3, iterations=3))),
    "VQLinear": (VQLinear, lambda: _each_linear(lambda lin: VQLinear.from_linear(lin, 6, 2, iterations=3))),
    "Int8DynamicLinear": (Int8DynamicLinear, lambda: _each_linear(Int8DynamicLinear.from_linear)),
    "FP8Linear": (FP8Linear, lambda: _each_linear(FP8Linear.from_linear)),
    "QuantizedEmbedding": (QuantizedEmbedding, lambda: _embedding(tied=False)),
    "TiedQuantizedHead": (TiedQuantizedHead, lambda: _embedding(tied=True)),
    "InputSelect": (InputSelect, lambda: _wrapped("input")),
    "OutputScatter": (OutputScatter, lambda: _wrapped("output")),
    "Linear": (nn.Linear, lambda: tiny_random_llama(seed=0)),
    "Linear-masked": (nn.Linear, _masked),
}


def _format_classes() -> set[type[nn.Module]]:
    """Every registered layer format (paqbench_register_layer_formats), plus torch's Linear."""
    return {nn.Linear, *registered_formats().values()}


def test_every_format_has_a_builder():
    covered = {cls for cls, _ in BUILDERS.values()}
    missing = sorted(cls.__name__ for cls in _format_classes() - covered)
    assert not missing, f"layer formats with no export-matrix builder: {missing}"


@needs_compressed_tensors
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", sorted(BUILDERS))
def test_matrix_cell(case, target, tmp_path):
    cls, build = BUILDERS[case]
    model = build()
    layers = [m for _, m in export_units(model) if type(m) is cls]
    if case == "Linear-masked":
        layers = [m for m in layers if get_mask(m) is not None]
    assert layers, f"the {case} builder put no {cls.__name__} in the model"
    cells = [capability_of(layer, target) for layer in layers]
    for cell in cells:
        assert cell.level in ("exact", "converted", "unavailable")
        assert cell.how if cell.level != "unavailable" else cell.reason
    if all(cell.level == "unavailable" for cell in cells):
        [record] = export_model(model, byte_tokenizer(), [target], tmp_path).records
        assert record.status == "unavailable" and record.reason
        return
    if target == "gguf":
        pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed; CI installs it")
    ids = window_ids(2, 32)
    # random weights give near-uniform logits, where float16 rounding (and FP8 activations
    # rounded in float16 by the engine) flips some ties; decisive positions must agree
    outcome = export_model(model, byte_tokenizer(), [target], tmp_path, ids=ids, tolerance=Tolerance(0.005, 0.85))
    [record] = outcome.records
    assert record.status == "ok", record.reason
    assert {layer.level for layer in record.layers if layer.layer == cls.__name__} <= {c.level for c in cells}
    checks = {m.name: m for m in outcome.measurements}
    assert checks[f"{target}/check"].value == 1.0, record.extra.get("agreement")
