"""The rtn method: every targeted Linear becomes a QuantizedLinear on the right grid."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from paqbench.layers import UnsupportedLayerError, get_mask, layer_kind, select_targets
from paqbench.quant.linear import QuantizedLinear
from paqbench.registry import get_registry
from paqbench_plugins.methods.prune.magnitude import Magnitude
from paqbench_plugins.methods.quant.rtn import RTN

pytestmark = pytest.mark.usefixtures("one_thread")


def weights_of(model):
    return {name: module.weight.detach().clone() for name, module in select_targets(model).items()}


def test_rtn_is_registered_as_a_quantize_method():
    assert get_registry().method("rtn") is RTN
    assert RTN.family == "quantize" and not RTN.needs_calibration
    assert RTN.accepts == frozenset({"dense", "pruned"})


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_rtn_quantizes_every_decoder_linear_within_half_a_step(tiny_llama, make_context, bits):
    original = weights_of(tiny_llama)
    info = RTN().apply(tiny_llama, RTN.Params(bits=bits), make_context())
    targets = select_targets(tiny_llama)
    assert set(targets) == set(original) and info["layers"] == len(original) == 14
    for name, layer in targets.items():
        assert isinstance(layer, QuantizedLinear) and layer_kind(layer) == "quantized"
        assert layer.bits == bits
        step = layer.scales.float().index_select(1, layer.g_idx.long())
        assert float(((original[name] - layer.dequantize()).abs() / (step / 2)).max()) <= 1 + 1e-4
    # down_proj has 176 inputs: one group of 128 and a shorter one of 48
    assert tiny_llama.model.layers[0].mlp.down_proj.n_groups == 2
    assert bits < info["bits_per_weight"] < bits + 1


def test_rtn_model_still_predicts_like_the_original(tiny_llama, make_context, calibration_batch):
    with torch.no_grad():
        before = tiny_llama(calibration_batch).logits
        RTN().apply(tiny_llama, RTN.Params(bits=8), make_context())
        after = tiny_llama(calibration_batch).logits
    assert torch.allclose(before, after, atol=0.05)
    assert not torch.equal(before, after)


def test_prune_then_rtn_keeps_exactly_the_masked_weights_zero(tiny_llama, make_context):
    ctx = make_context()
    Magnitude().apply(tiny_llama, Magnitude.Params(sparsity=0.5), ctx)
    masks = {name: get_mask(module).clone() for name, module in select_targets(tiny_llama).items()}
    RTN().apply(tiny_llama, RTN.Params(bits=3, group_size=32), ctx)
    for name, layer in select_targets(tiny_llama).items():
        weight = layer.dequantize()
        assert torch.all(weight[~masks[name]] == 0.0), name
        assert torch.equal(get_mask(layer), masks[name])
        # nothing else was zeroed beyond what rounding to the zero point did
        assert layer.paqbench_nonzero() <= int(masks[name].sum())
        assert layer.paqbench_nonzero() > 0.9 * int(masks[name].sum())


def test_exact_zeros_without_a_mask_stay_zero(tiny_llama, make_context):
    layer = tiny_llama.model.layers[0].self_attn.o_proj
    with torch.no_grad():
        layer.weight[:, :5] = 0.0
    RTN().apply(tiny_llama, RTN.Params(), make_context())
    assert torch.all(tiny_llama.model.layers[0].self_attn.o_proj.dequantize()[:, :5] == 0.0)


def test_rtn_refuses_layers_that_are_already_quantized(tiny_llama, make_context):
    RTN().apply(tiny_llama, RTN.Params(), make_context())
    with pytest.raises(UnsupportedLayerError, match="quantized"):
        RTN().apply(tiny_llama, RTN.Params(), make_context())


def test_targets_regex_limits_the_layers(tiny_llama, make_context):
    info = RTN().apply(tiny_llama, RTN.Params(targets=r"mlp\.down_proj"), make_context())
    assert info["layers"] == 2
    assert isinstance(tiny_llama.model.layers[1].mlp.down_proj, QuantizedLinear)
    assert not isinstance(tiny_llama.model.layers[1].mlp.up_proj, QuantizedLinear)


@pytest.mark.parametrize("bad", [{"bits": 5}, {"group_size": 0}, {"group_size": -2}, {"bitz": 4}])
def test_invalid_parameters_are_rejected_before_running(bad):
    with pytest.raises(ValidationError):
        RTN.Params(**bad)
