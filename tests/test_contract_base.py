"""The shared part of the layer contract (paqbench.layers.contract.CompressedLayer and
paqbench.quant.grouped.GroupedCodes): what every format now gets from the base instead of
writing it, checked on its own so a change to the base fails here first."""

from __future__ import annotations

import torch
from torch import nn

from paqbench.layers.sparsity import get_mask, set_mask
from paqbench.quant.embedding import QuantizedEmbedding
from paqbench.quant.linear import QuantizedLinear
from paqbench.quant.lut import LUTLinear
from paqbench.quant.quantizer import QuantConfig
from paqbench.quant.w8a8 import Int8DynamicLinear
from tests import example_format


def _linear(in_features: int = 64, out_features: int = 8) -> nn.Linear:
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features)
    set_mask(linear, torch.rand(out_features, in_features) > 0.25)
    return linear


def _reloaded(layer):
    state = layer.state_dict()
    empty = type(layer).empty_from_state({f"m.{k}": v for k, v in state.items()}, "m", torch.device("cpu"))
    empty.load_state_dict(state)
    return empty


def test_layer_options_default_to_no_bias_float32_and_write_the_marker():
    layer = Int8DynamicLinear(6, 4)
    assert layer.bias is None and layer.w8a8_meta.tolist() == [6, 4]
    with_bias = Int8DynamicLinear(6, 4, bias=True, dtype=torch.bfloat16)
    assert with_bias.bias.dtype == torch.bfloat16 and not bool(with_bias.bias.any())


def test_carry_over_copies_bias_and_mask_instead_of_aliasing_them():
    linear = _linear()
    layer = example_format.Int8RowLinear.from_linear(linear)
    bias, mask = layer.bias.detach().clone(), get_mask(layer).clone()
    with torch.no_grad():
        linear.bias.add_(1.0)
    get_mask(linear).fill_(False)
    assert torch.equal(layer.bias, bias) and torch.equal(get_mask(layer), mask)
    assert layer.bias.requires_grad == linear.bias.requires_grad


def test_select_rows_slices_the_named_tensors_bias_mask_and_marker():
    layer = example_format.Int8RowLinear.from_linear(_linear())
    weight, bias, mask = layer.dequantize(), layer.bias.detach().clone(), get_mask(layer).clone()
    index = torch.tensor([5, 0, 2])
    layer.select_output_features(index)
    assert torch.equal(layer.dequantize(), weight[index]) and torch.equal(layer.bias, bias[index])
    assert torch.equal(get_mask(layer), mask[index]) and layer.int8row_meta.tolist() == [64, 3]


def test_compact_drops_groups_no_column_uses_and_renumbers_g_idx():
    layer = LUTLinear.from_linear(_linear(), 3, 16, iterations=2)  # 4 groups of 16 columns
    tables, weight = layer.lut.clone(), layer.dequantize()
    index = torch.tensor([40, 3, 41, 7])  # groups 2, 0, 2, 0
    layer.select_input_features(index)
    assert layer.g_idx.tolist() == [1, 0, 1, 0] and layer.g_idx.dtype == torch.int32
    assert torch.equal(layer.lut, tables[:, [0, 2]]) and torch.equal(layer.dequantize(), weight[:, index])
    assert _reloaded(layer).n_groups == 2


def test_the_layout_follows_the_loaded_marker_with_bools_and_encoded_fields():
    layer = QuantizedLinear.from_linear(_linear(), QuantConfig(4, 32, symmetric=True))
    layer.select_input_features(torch.arange(40))
    loaded = _reloaded(layer)
    assert (loaded.in_features, loaded.symmetric, loaded.group_size) == (40, True, 32)
    assert torch.equal(loaded.dequantize(), layer.dequantize())
    embedding = QuantizedEmbedding.from_embedding(nn.Embedding(10, 32), QuantConfig(4, 16))
    assert embedding.emeta.tolist()[5] == -1 and _reloaded(embedding).padding_idx is None


def test_format_floats_keep_their_dtype_through_a_cast():
    layer = QuantizedLinear.from_linear(_linear(), QuantConfig(4, 32)).to(torch.bfloat16)
    assert layer.scales.dtype == torch.float16 and layer.bias.dtype == torch.bfloat16
