"""llmcompressor: a recipe as a step, on the run's calibration windows, converted into
paqbench's layers (runs in tox -e peer-llmcompressor: llm-compressor pins transformers 5.17)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("llmcompressor", reason="llmcompressor is not installed (tox -e peer-llmcompressor runs these)")

from paqbench.layers import get_mask, layer_kind, select_targets
from paqbench.quant.linear import QuantizedLinear
from paqbench.quant.w8a8 import Int8DynamicLinear
from paqbench_plugins.methods.peers.llmcompressor_peer import LLMCompressor

pytestmark = pytest.mark.usefixtures("one_thread")


def weights(symmetric=True, group_size=16, **extra):
    return {"num_bits": 4, "type": "int", "symmetric": symmetric, "strategy": "group", "group_size": group_size,
            **extra}


def modifier(kind: str, **args):
    return {kind: {"ignore": ["lm_head"], **args}}


def quantization(kind: str, **weight_args):
    return modifier(kind, config_groups={"g": {"targets": ["Linear"], "weights": weights(**weight_args)}})


def fake_quantized(module) -> torch.Tensor:
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    return fake_quantize(module.weight, module.weight_scale, module.weight_zero_point,
                         module.quantization_scheme.weights)


def ctx_for(make_context):
    return make_context(n_samples=4, seqlen=32)


@pytest.mark.parametrize("kind", ["GPTQModifier", "QuantizationModifier"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_float16_scaled_recipes_convert_bit_for_bit(tiny_llama, make_context, kind, symmetric):
    recipe = quantization(kind, symmetric=symmetric, scale_dtype="float16")
    info = LLMCompressor().apply(tiny_llama, LLMCompressor.Params(recipe=recipe), ctx_for(make_context))
    conversion = info["conversion"]
    assert info["peer"] == "llmcompressor" and info["peer_version"] and info["calibration_windows"] == 4
    assert conversion["exact"] and conversion["formats"] == {"packed": 14}, conversion
    for layer in select_targets(tiny_llama).values():
        assert isinstance(layer, QuantizedLinear) and layer.bits == 4 and layer.group_size == 16
        assert layer.symmetric == symmetric and layer_kind(layer) == "quantized"


def test_the_packed_weight_is_compressed_tensors_fake_quantized_one(tiny_llama, make_context):
    """Re-run the same recipe with llm-compressor alone and compare each layer with its
    fake_quantize: paqbench's layers hold exactly that weight."""
    import copy

    from paqbench_plugins.methods.peers.llmcompressor_peer import run_oneshot, staged

    recipe = quantization("GPTQModifier", scale_dtype="float16")
    ctx = ctx_for(make_context)
    theirs = copy.deepcopy(tiny_llama)
    import yaml

    run_oneshot(theirs, yaml.safe_dump(staged(recipe)), ctx.calibration_batches(), ctx, None)
    LLMCompressor().apply(tiny_llama, LLMCompressor.Params(recipe=recipe), ctx)
    for name, layer in select_targets(tiny_llama).items():
        assert torch.equal(layer.dequantize(), fake_quantized(theirs.get_submodule(name)).float()), name


def test_float32_scales_are_recorded_as_not_exact(tiny_llama, make_context):
    info = LLMCompressor().apply(tiny_llama, LLMCompressor.Params(recipe=quantization("QuantizationModifier")),
                                 ctx_for(make_context))
    conversion = info["conversion"]
    assert not conversion["exact"] and conversion["notes"] == ["float32 scales stored as float16"]
    assert 0 < conversion["max_abs_weight_diff"] < 1e-3


def test_w8a8_becomes_int8_dynamic_with_the_activation_difference_recorded(tiny_llama, make_context):
    recipe = modifier("QuantizationModifier", scheme="W8A8", targets=["Linear"])
    info = LLMCompressor().apply(tiny_llama, LLMCompressor.Params(recipe=recipe), ctx_for(make_context))
    conversion = info["conversion"]
    assert conversion["formats"] == {"int8-dynamic": 14} and conversion["max_abs_weight_diff"] == 0.0
    assert "activations" in conversion["notes"][0]
    assert all(isinstance(m, Int8DynamicLinear) for m in select_targets(tiny_llama).values())


@pytest.mark.parametrize("kind", ["SparseGPTModifier", "WandaPruningModifier"])
def test_sparsity_recipes_keep_dense_weights_and_record_masks(tiny_llama, make_context, kind):
    recipe = modifier(kind, sparsity=0.5, targets=["Linear"])
    info = LLMCompressor().apply(tiny_llama, LLMCompressor.Params(recipe=recipe), ctx_for(make_context))
    assert info["conversion"]["exact"] and info["conversion"]["formats"] == {"dense": 14}
    for layer in select_targets(tiny_llama).values():
        mask = get_mask(layer)
        assert layer_kind(layer) == "pruned" and torch.equal(mask, layer.weight != 0)
        assert 0.45 < 1 - mask.float().mean().item() < 0.55


def test_an_invalid_recipe_is_one_line(tiny_llama, make_context):
    with pytest.raises(RuntimeError, match="llm-compressor failed: ") as info:
        LLMCompressor().apply(tiny_llama, LLMCompressor.Params(recipe={"NoSuchModifier": {"x": 1}}),
                              ctx_for(make_context))
    assert "\n" not in str(info.value)


def test_a_recipe_that_changes_nothing_is_refused(tiny_llama, make_context):
    recipe = quantization("QuantizationModifier")
    recipe["QuantizationModifier"]["ignore"] = ["re:.*"]
    with pytest.raises(Exception, match=r"changed no targeted layer|failed"):
        LLMCompressor().apply(tiny_llama, LLMCompressor.Params(recipe=recipe), ctx_for(make_context))
