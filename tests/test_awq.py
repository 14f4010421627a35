"""AWQ: the scale math, folding, clipping, and the method against RTN on outlier inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paqbench.layers import UnsupportedLayerError, get_mask, select_targets
from paqbench.models.embedded import tiny_random_llama
from paqbench.quant.awq import (
    AWQConfig,
    apply_clip,
    awq_block,
    fold_scales,
    normalized_scales,
    pseudo_quantize,
    search_clip,
)
from paqbench.quant.linear import QuantizedLinear, load_quantized
from paqbench.quant.quantizer import QuantConfig, quantize_rtn
from paqbench.quant.sequential import capture_block_inputs, forward_block
from paqbench.registry import get_registry
from paqbench_plugins.methods.prune.magnitude import Magnitude
from paqbench_plugins.methods.quant.awq import AWQ
from paqbench_plugins.methods.quant.rtn import RTN

OUTLIERS = [3, 17, 40]


pytestmark = pytest.mark.usefixtures("one_thread")


def outlier_llama(**overrides) -> nn.Module:
    """The tiny Llama with a few input channels 30x larger at every norm's output: the
    activation outliers AWQ is built for (real LLMs have them)."""
    model = tiny_random_llama(**overrides)
    with torch.no_grad():
        for block in model.model.layers:
            for norm in (block.input_layernorm, block.post_attention_layernorm):
                norm.weight[OUTLIERS] *= 30
    return model


@pytest.fixture
def held_out(make_context) -> torch.Tensor:
    return torch.cat(make_context(seed=1).calibration_batches())


def logit_error(model: nn.Module, reference: torch.Tensor, batch: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(batch).logits - reference).pow(2).mean())


# ---------------------------------------------------------------------------- the math


def test_scales_are_activation_powers_normalized_as_the_reference():
    x_mean = torch.tensor([0.5, 2.0, 8.0, 0.0])
    scales = normalized_scales(x_mean, 0.5)
    raw = x_mean.pow(0.5).clamp(min=1e-4)
    assert torch.allclose(scales, raw / (raw.max() * raw.min()).sqrt())
    assert torch.equal(normalized_scales(x_mean, 0.0), torch.ones(4))  # alpha 0: no scaling (RTN)


def test_folding_leaves_a_norm_and_linear_chain_unchanged():
    torch.manual_seed(0)
    norm = nn.LayerNorm(24)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    first, second = nn.Linear(24, 16), nn.Linear(24, 8)
    up, down = nn.Linear(24, 40), nn.Linear(40, 24)
    x = torch.randn(5, 24)
    before = (first(norm(x)), second(norm(x)), down(up(x)))
    with torch.no_grad():
        fold_scales(norm, [first, second], torch.rand(24) * 4 + 0.1)
        fold_scales(up, [down], torch.rand(40) * 4 + 0.1)
    after = (first(norm(x)), second(norm(x)), down(up(x)))
    for a, b in zip(before, after, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("num_key_value_heads", [2, 4])
def test_scale_folding_leaves_the_float_model_unchanged(make_context, held_out, num_key_value_heads):
    """quantize=False: AWQ searches and folds scales but keeps float Linears; the logits
    must not move, while the norms and weights did change. With 4 KV heads (no grouped-
    query attention) the v -> o group applies too."""
    model = outlier_llama(num_key_value_heads=num_key_value_heads)
    with torch.no_grad():
        before = model(held_out).logits
    norm_before = model.model.layers[0].input_layernorm.weight.detach().clone()
    info = AWQ().apply(model, AWQ.Params(quantize=False), make_context())
    with torch.no_grad():
        after = model(held_out).logits
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4), float((before - after).abs().max())
    assert not torch.equal(norm_before, model.model.layers[0].input_layernorm.weight)
    assert all(isinstance(m, nn.Linear) for m in select_targets(model).values())
    assert info["mean_alpha"] > 0
    v_to_o = [key for key in info["alphas"] if "v_proj -> self_attn.o_proj" in key]
    if num_key_value_heads == 4:
        assert len(v_to_o) == 2 and not info["unscaled_layers"]
    else:  # grouped-query attention: o_proj is quantized without a scale, and the facts say so
        assert not v_to_o
        assert sorted(info["unscaled_layers"]) == [f"model.layers.{i}.self_attn.o_proj" for i in range(2)]
        assert "grouped-query" in info["unscaled_layers"]["model.layers.0.self_attn.o_proj"]


def test_a_single_alpha_is_round_to_nearest(make_context):
    """n_grid = 1 searches only alpha = 0 (s = 1): exactly RTN's codes."""
    awq, rtn = tiny_random_llama(), tiny_random_llama()
    AWQ().apply(awq, AWQ.Params(n_grid=1), make_context())
    RTN().apply(rtn, RTN.Params(), make_context())
    for name, layer in select_targets(awq).items():
        other = rtn.get_submodule(name)
        assert torch.equal(layer.qweight, other.qweight) and torch.equal(layer.scales, other.scales), name


def test_clip_search_shrinks_a_range_whose_outlier_sees_no_input():
    """A huge weight on an input that is always 0 costs nothing in the output but
    stretches its group's grid: the best clip is the largest shrink (0.55 of the max)."""
    torch.manual_seed(0)
    weight = torch.randn(8, 64) * 0.1
    weight[2, 5] = 5.0
    x = torch.randn(300, 64)
    x[:, 5] = 0.0
    config = QuantConfig(4, 32)
    best = search_clip(weight, x, config)
    assert best.shape == (8, 2)
    assert best[2, 0] == pytest.approx(5.0 * 0.55)
    # shrink 0 is on the grid: per row and group the clipped error is never worse
    layer = nn.Linear(64, 8, bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    apply_clip(layer, best, config)
    assert float(layer.weight.detach().abs().max()) <= 5.0 * 0.55 + 1e-6
    clipped = x @ pseudo_quantize(layer.weight.detach(), config, None).T
    plain = x @ pseudo_quantize(weight, config, None).T
    exact = x @ weight.T
    assert (clipped - exact).pow(2).mean(0)[2] < 0.75 * (plain - exact).pow(2).mean(0)[2]


# ---------------------------------------------------------------------------- against RTN


def test_awq_block_output_error_is_below_rtn_on_outlier_channels(calibration_batch, held_out):
    """One decoder block, 4-bit groups of 128: AWQ vs RTN output error on held-out windows."""
    model = outlier_llama()
    blocks = model.model.layers
    calibration = capture_block_inputs(model, list(calibration_batch.split(2)), blocks[0])
    test_inputs = capture_block_inputs(model, list(held_out.split(2)), blocks[0])
    reference = torch.cat(forward_block(blocks[0], test_inputs))
    config = QuantConfig(4, 128)
    names = [name for name, m in blocks[0].named_modules() if isinstance(m, nn.Linear)]
    rtn = outlier_llama().model.layers[0]
    for name in names:
        module = rtn.get_submodule(name)
        parent, _, child = name.rpartition(".")
        setattr(rtn.get_submodule(parent), child, QuantizedLinear.from_linear(module, config))
    result = awq_block(blocks[0], calibration, names, config)
    assert set(result.quantized) == set(names)
    assert all(g.loss <= g.rtn_loss for g in result.groups)
    with torch.no_grad():
        awq_error = float((torch.cat(forward_block(blocks[0], test_inputs)) - reference).pow(2).mean())
        rtn_error = float((torch.cat(forward_block(rtn, test_inputs)) - reference).pow(2).mean())
    assert awq_error < 0.5 * rtn_error, (awq_error, rtn_error)


@pytest.mark.parametrize("params", [{}, {"clip": True}, {"duo_scaling": True}, {"bits": 3, "group_size": 32}])
def test_awq_model_predicts_better_than_rtn(make_context, held_out, params):
    ctx = make_context()
    dense = outlier_llama()
    with torch.no_grad():
        reference = dense(held_out).logits
    rtn = outlier_llama()
    RTN().apply(rtn, RTN.Params(**{k: v for k, v in params.items() if k in ("bits", "group_size")}), ctx)
    awq = outlier_llama()
    info = AWQ().apply(awq, AWQ.Params(**params), ctx)
    assert info["layers"] == 14 and info["scale_groups"] == 6 and info["calibration_windows"] == 8
    assert info["mean_loss_vs_rtn"] < 1.0
    if params.get("clip"):
        assert info["clipped_layers"] == 10  # q and k are never clipped
    assert all(isinstance(m, QuantizedLinear) for m in select_targets(awq).values())
    # measured: 0.26x at 4-bit g128, 0.54x at 3-bit g32
    assert logit_error(awq, reference, held_out) < 0.7 * logit_error(rtn, reference, held_out)


# ---------------------------------------------------------------------------- the contract


def test_prune_then_awq_keeps_exactly_the_masked_weights_zero(make_context):
    model = outlier_llama()
    ctx = make_context()
    Magnitude().apply(model, Magnitude.Params(sparsity=0.5), ctx)
    masks = {name: get_mask(module).clone() for name, module in select_targets(model).items()}
    AWQ().apply(model, AWQ.Params(bits=4, group_size=32, clip=True), ctx)
    for name, layer in select_targets(model).items():
        assert isinstance(layer, QuantizedLinear)
        assert torch.all(layer.dequantize()[~masks[name]] == 0.0), name
        assert torch.equal(get_mask(layer), masks[name])
        assert layer.paqbench_nonzero() > 0.9 * int(masks[name].sum())


def test_save_then_load_gives_identical_outputs(make_context, tmp_path, held_out):
    model = outlier_llama()
    AWQ().apply(model, AWQ.Params(clip=True), make_context())
    with torch.no_grad():
        expected = model(held_out[:2]).logits
    model.save_pretrained(tmp_path, safe_serialization=True)
    fresh = load_quantized(tiny_random_llama(seed=5), tmp_path)  # norms come back folded, too
    assert isinstance(fresh.model.layers[1].mlp.down_proj, QuantizedLinear)
    with torch.no_grad():
        assert torch.equal(fresh(held_out[:2]).logits, expected)


def test_targets_limit_the_quantized_layers_but_scales_still_fold_consistently(make_context, held_out):
    model = outlier_llama()
    with torch.no_grad():
        before = model(held_out).logits
    info = AWQ().apply(model, AWQ.Params(bits=8, targets=r"layers\.0\.self_attn\.q_proj"), make_context())
    assert info["layers"] == 1 and info["scale_groups"] == 1
    block = model.model.layers[0]
    assert isinstance(block.self_attn.q_proj, QuantizedLinear)
    assert isinstance(block.self_attn.k_proj, nn.Linear)  # scaled, not quantized
    with torch.no_grad():
        after = model(held_out).logits
    assert torch.allclose(before, after, atol=0.05)  # 8 bits on one layer: close, and k/v consistent


def test_awq_refuses_quantized_layers_and_targets_outside_blocks(make_context):
    model = tiny_random_llama()
    ctx = make_context()
    with pytest.raises(ValueError, match="lm_head"):
        AWQ().apply(model, AWQ.Params(targets="lm_head|down_proj"), ctx)
    RTN().apply(model, RTN.Params(), ctx)
    with pytest.raises(UnsupportedLayerError, match="quantized"):
        AWQ().apply(model, AWQ.Params(), ctx)


def test_awq_is_registered_and_needs_calibration():
    assert get_registry().method("awq") is AWQ
    assert AWQ.family == "quantize" and AWQ.needs_calibration
    assert AWQ.accepts == frozenset({"dense", "pruned"})
    assert AWQConfig().n_grid == AWQ.Params().n_grid == 20


# ---------------------------------------------------------------------------- real model


@pytest.mark.realmodel
def test_awq_beats_rtn_on_a_real_smollm2_block(smollm2, make_context):
    """SmolLM2-135M block 2 (576 inputs: groups of 128 and a shorter one of 64), 4 windows
    of 128 tokens for calibration, 2 held out: block output error, AWQ vs RTN."""
    model, tokenizer = smollm2
    windows = make_context(tokenizer=tokenizer, n_samples=6, seqlen=128).calibration_batches()
    blocks = model.model.layers
    with torch.no_grad():
        inputs = capture_block_inputs(model, windows, blocks[0])
        for index in range(2):
            inputs = inputs.with_hidden(forward_block(blocks[index], inputs))
    calibration = type(inputs)(inputs.hidden[:4], inputs.args[:4], inputs.kwargs[:4])
    test_inputs = type(inputs)(inputs.hidden[4:], inputs.args[4:], inputs.kwargs[4:])
    import copy

    block = copy.deepcopy(blocks[2])
    rtn = copy.deepcopy(blocks[2])
    config = QuantConfig(4, 128)
    names = [name for name, m in block.named_modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        reference = torch.cat(forward_block(block, test_inputs))
        for name in names:
            parent, _, child = name.rpartition(".")
            setattr(rtn.get_submodule(parent), child, QuantizedLinear.from_quantized(
                quantize_rtn(rtn.get_submodule(name).weight, config)))
        awq_block(block, calibration, names, config)
        awq_error = float((torch.cat(forward_block(block, test_inputs)) - reference).pow(2).mean())
        rtn_error = float((torch.cat(forward_block(rtn, test_inputs)) - reference).pow(2).mean())
    print(f"smollm2 block 2, 4-bit g128 output MSE: awq {awq_error:.4g}, rtn {rtn_error:.4g}")
    assert awq_error < 0.9 * rtn_error
