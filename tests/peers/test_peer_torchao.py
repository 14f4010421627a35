"""torchao's quantize_ as a step: converted into paqbench's layers bit for bit where the
scheme allows, every difference recorded where it does not."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("torchao", reason="torchao is not installed (CI installs it: pip install 'paqbench[torchao]')")

from paqbench.layers import get_mask, layer_kind, select_targets
from paqbench.quant.linear import QuantizedLinear
from paqbench.quant.w8a8 import Int8DynamicLinear
from paqbench_plugins.methods.peers.torchao_peer import TorchAO, peer_weight, torchao_config
from paqbench_plugins.methods.prune.magnitude import Magnitude

pytestmark = pytest.mark.usefixtures("one_thread")


def torchao_reference(weight: torch.Tensor, params) -> torch.Tensor:
    """torchao's own dequantized weight of one Linear, quantized outside paqbench."""
    import torchao

    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data.copy_(weight)
    holder = torch.nn.Sequential(linear)
    torchao.quantization.quantize_(holder, torchao_config(torchao, params, weight.shape[1]))
    return peer_weight(holder[0].weight)


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_weight_only_packs_torchaos_codes_bit_for_bit(tiny_llama, make_context, symmetric):
    original = {name: m.weight.detach().clone() for name, m in select_targets(tiny_llama).items()}
    params = TorchAO.Params(scheme="int4-weight-only", group_size=16, symmetric=symmetric)
    info = TorchAO().apply(tiny_llama, params, make_context())
    assert info["peer"] == "torchao" and info["peer_version"]
    assert info["conversion"]["exact"] and info["conversion"]["formats"] == {"packed": 14}
    for name, layer in select_targets(tiny_llama).items():
        assert isinstance(layer, QuantizedLinear) and layer.bits == 4 and layer.symmetric == symmetric
        assert layer.group_size == 16 and layer_kind(layer) == "quantized"
        assert torch.equal(layer.dequantize(), torchao_reference(original[name], params)), name
        # and torchao quantized something: not the float weight
        assert not torch.equal(layer.dequantize(), original[name])


def test_int8_weight_only_records_its_float16_scales(tiny_llama, make_context):
    original = {name: m.weight.detach().clone() for name, m in select_targets(tiny_llama).items()}
    params = TorchAO.Params(scheme="int8-weight-only", group_size=-1)
    untouched = copy.deepcopy(tiny_llama)
    info = TorchAO().apply(tiny_llama, params, make_context())
    conversion = info["conversion"]
    assert not conversion["exact"] and conversion["notes"] == ["float32 scales stored as float16"]
    for name, layer in select_targets(tiny_llama).items():
        reference = torchao_reference(original[name], params)
        assert layer.bits == 8 and layer.group_size == -1
        # to float16 rounding of the scale: relative 2**-11 of each weight at most
        assert torch.allclose(layer.dequantize(), reference, rtol=2**-11, atol=0)
    assert 0 < conversion["max_abs_weight_diff"] < 1e-3
    with pytest.raises(ValueError, match="cannot be converted exactly"):
        TorchAO().apply(untouched, params.model_copy(update={"require_exact": True}), make_context())


def test_int8_dynamic_activation_keeps_torchaos_weights_and_says_how_activations_differ(tiny_llama, make_context):
    original = {name: m.weight.detach().clone() for name, m in select_targets(tiny_llama).items()}
    info = TorchAO().apply(tiny_llama, TorchAO.Params(scheme="int8-dynamic-activation"), make_context())
    conversion = info["conversion"]
    assert conversion["formats"] == {"int8-dynamic": 14} and conversion["max_abs_weight_diff"] == 0.0
    assert not conversion["exact"] and "activations" in conversion["notes"][0]
    params = TorchAO.Params(scheme="int8-dynamic-activation")
    for name, layer in select_targets(tiny_llama).items():
        assert isinstance(layer, Int8DynamicLinear)
        assert torch.equal(layer.dequantize(), torchao_reference(original[name], params))


def test_a_width_the_group_does_not_divide_is_one_clear_error(tiny_llama, make_context):
    with pytest.raises(ValueError, match=r"down_proj has 176 input columns, not a multiple of 32 \(every width "
                       r"here is a multiple of 16\)"):
        TorchAO().apply(tiny_llama, TorchAO.Params(group_size=32), make_context())


def test_prune_then_torchao_keeps_the_mask(tiny_llama, make_context):
    ctx = make_context()
    Magnitude().apply(tiny_llama, Magnitude.Params(sparsity=0.5), ctx)
    masks = {name: get_mask(m).clone() for name, m in select_targets(tiny_llama).items()}
    info = TorchAO().apply(tiny_llama, TorchAO.Params(group_size=16, symmetric=False), ctx)
    assert info["conversion"]["exact"]
    for name, layer in select_targets(tiny_llama).items():
        assert torch.all(layer.dequantize()[~masks[name]] == 0.0) and torch.equal(get_mask(layer), masks[name])


@pytest.mark.realmodel
def test_int4_on_the_embedded_model_matches_torchaos_own_model(smollm2):
    import torchao

    model, _ = smollm2
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    params = TorchAO.Params(scheme="int4-weight-only", group_size=64)
    from paqbench.models.embedded import byte_tokenizer
    from paqbench.testing import make_run_context

    info = TorchAO().apply(ours, params, make_run_context(byte_tokenizer(), __import__("pathlib").Path(".")))
    assert info["conversion"]["exact"] and info["conversion"]["layers"] == 7 * model.config.num_hidden_layers
    names = set(select_targets(theirs))
    torchao.quantization.quantize_(theirs, torchao_config(torchao, params, 0),
                                   filter_fn=lambda module, fqn: fqn in names)
    ids = torch.randint(0, model.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(ids).logits, theirs(ids).logits
    # same weights, different matmul kernels: logits agree to float32 accumulation noise
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), float((a - b).abs().max())
