"""SmoothQuant: the scale formula, function-preserving folds, flatter activations, and
less W8A8 error than plain w8a8 on outlier activations."""

from __future__ import annotations

import pydantic
import pytest
import torch
from torch import nn

from paqbench.layers import get_mask, select_targets
from paqbench.models.embedded import tiny_random_llama
from paqbench.quant.smoothquant import channel_spread, smoothing_scales
from paqbench.quant.w8a8 import Int8DynamicLinear
from paqbench_plugins.methods.prune.magnitude import Magnitude
from paqbench_plugins.methods.quant.smoothquant import SmoothQuant
from paqbench_plugins.methods.quant.w8a8 import W8A8

OUTLIERS = [3, 17, 40]

pytestmark = pytest.mark.usefixtures("one_thread")


def outlier_llama(**overrides) -> nn.Module:
    """The tiny Llama (float32) with a few norm output channels 30x larger: the activation
    outliers per-token int8 suffers from."""
    model = tiny_random_llama(**overrides)
    with torch.no_grad():
        for block in model.model.layers:
            for norm in (block.input_layernorm, block.post_attention_layernorm):
                norm.weight[OUTLIERS] *= 30
    return model


@pytest.fixture
def held_out(make_context) -> torch.Tensor:
    return torch.cat(make_context(seed=1).calibration_batches())


def input_maxima(model: nn.Module, batch: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Per input channel max |x| of the modules ``names`` on ``batch``."""
    maxima: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(module, args, output, name=name):
            maxima[name] = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0)
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    with torch.no_grad():
        model(batch)
    for handle in handles:
        handle.remove()
    return maxima


def test_scales_follow_the_paper_formula():
    act_max = torch.tensor([4.0, 1.0, 0.0, 9.0])
    w1 = torch.tensor([[0.5, -2.0, 1.0, 0.0], [-1.0, 0.5, 3.0, 0.0]])
    w2 = torch.tensor([[0.25, 1.0, -0.5, 0.0]])
    scales = smoothing_scales(act_max, [w1, w2], alpha=0.5)
    w_max = torch.tensor([1.0, 2.0, 3.0, 0.0])
    expected = act_max.sqrt() / w_max.sqrt()
    assert torch.allclose(scales[:2], expected[:2])
    assert scales[2] == 1 and scales[3] == 1  # zero activation or zero weight column: nothing to migrate
    assert torch.allclose(smoothing_scales(act_max, [w1], 1.0)[:2], act_max[:2])  # alpha 1: all to the weights
    assert channel_spread(torch.tensor([1.0, 1.0, 4.0])) == pytest.approx(2.0)


@pytest.mark.parametrize("num_key_value_heads", [2, 4])
def test_smoothing_alone_leaves_the_logits_unchanged(make_context, held_out, num_key_value_heads):
    model = outlier_llama(num_key_value_heads=num_key_value_heads)
    with torch.no_grad():
        before = model(held_out).logits
    norm_before = model.model.layers[0].input_layernorm.weight.detach().clone()
    info = SmoothQuant().apply(model, SmoothQuant.Params(quantize=False), make_context())
    with torch.no_grad():
        after = model(held_out).logits
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4), float((before - after).abs().max())
    assert not torch.equal(norm_before, model.model.layers[0].input_layernorm.weight)
    assert all(isinstance(m, nn.Linear) for m in select_targets(model).values())
    v_to_o = [key for key in info["alphas"] if "v_proj -> self_attn.o_proj" in key]
    if num_key_value_heads == 4:  # every group of both blocks
        assert info["scale_groups"] == 8 and len(v_to_o) == 2 and not info["unscaled_layers"]
    else:  # grouped-query attention: o_proj cannot fold into v_proj and is listed
        assert info["scale_groups"] == 6 and not v_to_o
        assert "grouped-query" in info["unscaled_layers"]["model.layers.0.self_attn.o_proj"]


def test_smoothing_flattens_the_channel_maxima(make_context, held_out):
    """alpha = 0.5 divides channel j by sqrt(max|X_j| / max|W_j|): on held-out tokens the
    outlier channels' maxima come down relative to the rest (largest / mean shrinks)."""
    model = outlier_llama(num_key_value_heads=4)
    readers = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.down_proj"]
    before = input_maxima(model, held_out, readers)
    info = SmoothQuant().apply(model, SmoothQuant.Params(quantize=False), make_context())
    after = input_maxima(model, held_out, readers)
    for name in readers:  # the injected outliers (norm outputs) by more than half
        shrink = 0.5 if "down_proj" not in name else 0.8
        assert channel_spread(after[name]) < shrink * channel_spread(before[name]), name
    assert info["mean_channel_spread_after"] < info["mean_channel_spread_before"]


def test_w8a8_error_drops_against_plain_w8a8(make_context, held_out):
    """The point of the method: with outlier channels, per-token int8 activations of the
    smoothed model lose less than plain W8A8 (logit MSE against the float model)."""
    reference_model = outlier_llama()
    with torch.no_grad():
        reference = reference_model(held_out).logits
    smooth, plain = outlier_llama(), outlier_llama()
    info = SmoothQuant().apply(smooth, SmoothQuant.Params(), make_context())
    W8A8().apply(plain, W8A8.Params(), make_context())
    errors = {}
    for label, model in (("smooth", smooth), ("plain", plain)):
        assert all(isinstance(m, Int8DynamicLinear) for m in select_targets(model, r"layers\.\d+\.").values())
        with torch.no_grad():
            errors[label] = float((model(held_out).logits - reference).pow(2).mean())
    assert errors["smooth"] < 0.5 * errors["plain"], errors
    assert info["layers"] == 14 and info["bits_per_weight"] > 8


def test_layer_alphas_pick_the_alpha_per_group(make_context):
    model = outlier_llama()
    params = SmoothQuant.Params(alpha=0.5, layer_alphas={r"layers\.1\.mlp\.down_proj": 0.8, "gate_proj": 0.3},
                                quantize=False)
    info = SmoothQuant().apply(model, params, make_context())
    alphas = info["alphas"]
    assert alphas["model.layers.1.mlp.up_proj -> mlp.down_proj"] == 0.8
    assert alphas["model.layers.0.mlp.up_proj -> mlp.down_proj"] == 0.5
    assert alphas["model.layers.0.post_attention_layernorm -> mlp.gate_proj, mlp.up_proj"] == 0.3
    norm_only = SmoothQuant().apply(outlier_llama(), SmoothQuant.Params(fold_into_linear=False, quantize=False),
                                    make_context())
    assert all("layernorm" in key for key in norm_only["alphas"]) and norm_only["scale_groups"] == 4


def test_pruned_weights_stay_zero(make_context):
    model = tiny_random_llama()
    Magnitude().apply(model, Magnitude.Params(sparsity=0.5), make_context())
    masks = {name: get_mask(layer).clone() for name, layer in select_targets(model).items()}
    SmoothQuant().apply(model, SmoothQuant.Params(), make_context())
    for name, keep in masks.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, Int8DynamicLinear)
        assert not bool(layer.weight_int8[~keep].any()), name


def test_bad_layer_alphas_are_one_clear_error():
    with pytest.raises(pydantic.ValidationError, match="not a valid regex"):
        SmoothQuant.Params(layer_alphas={"(": 0.5})
    with pytest.raises(pydantic.ValidationError, match="between 0 and 1"):
        SmoothQuant.Params(layer_alphas={"down": 1.5})
