"""GPTQ: the algorithm against its math, the layer-sequential helper, and the method."""

from __future__ import annotations

import pytest
import torch

from paqbench.blockwise.driver import layer_sequential
from paqbench.layers import UnsupportedLayerError, get_mask, select_targets
from paqbench.quant.gptq import HessianAccumulator, gptq_quantize
from paqbench.quant.linear import QuantizedLinear
from paqbench.quant.quantizer import QuantConfig, quantize_rtn
from paqbench.quant.sequential import (
    capture_block_inputs,
    collect_inputs,
    forward_block,
    linear_groups,
    record_inputs,
)
from paqbench.registry import get_registry
from paqbench_plugins.methods.prune.magnitude import Magnitude
from paqbench_plugins.methods.quant.gptq import GPTQ
from paqbench_plugins.methods.quant.rtn import RTN

pytestmark = pytest.mark.usefixtures("one_thread")


def layer_inputs(model, batches, block_index: int, names: list[str]) -> dict[str, torch.Tensor]:
    """The real inputs ``[tokens, in]`` of some Linears of one decoder block."""
    blocks = model.model.layers
    inputs = capture_block_inputs(model, batches, blocks[0])
    for index in range(block_index):
        inputs = inputs.with_hidden(forward_block(blocks[index], inputs))
    block = blocks[block_index]
    modules = {name: block.get_submodule(name) for name in names}
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    with record_inputs(modules, lambda name, x: seen[name].append(x.reshape(-1, x.shape[-1]))):
        forward_block(block, inputs)
    return {name: torch.cat(xs).float() for name, xs in seen.items()}


def hessian_of(x: torch.Tensor) -> torch.Tensor:
    accumulator = HessianAccumulator(x.shape[1])
    accumulator.add(x)
    return accumulator.hessian


def output_error(weight: torch.Tensor, quantized: torch.Tensor, x: torch.Tensor) -> float:
    """||W X - Q X||^2 over the calibration tokens."""
    return float(((weight.float() - quantized) @ x.T).pow(2).sum())


@pytest.fixture
def tiny_inputs(tiny_llama, calibration_batch):
    batches = list(calibration_batch.split(1))
    names = ["self_attn.q_proj", "mlp.down_proj"]
    with torch.no_grad():
        return tiny_llama, layer_inputs(tiny_llama, batches, 1, names)


# ---------------------------------------------------------------------------- the algorithm


def test_hessian_is_two_x_xt_over_tokens_in_any_batching():
    x = torch.randn(300, 24)
    whole = HessianAccumulator(24)
    whole.add(x)
    parts = HessianAccumulator(24)
    for chunk in x.split(37):
        parts.add(chunk.view(1, -1, 24))
    expected = 2 * x.T @ x / 300
    assert torch.allclose(whole.hessian, expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(parts.hessian, expected, rtol=1e-4, atol=1e-5)
    assert parts.rows == 300


@pytest.mark.parametrize(
    "config,act_order,static",
    [
        (QuantConfig(4, 128), False, False),  # down_proj: 176 = 128 + a shorter group of 48
        (QuantConfig(4, 128), True, False),
        (QuantConfig(4, 32), True, True),
        (QuantConfig(3, -1), False, False),
        (QuantConfig(2, 32, symmetric=True), True, False),
    ],
)
def test_gptq_reconstructs_layer_outputs_better_than_rtn(tiny_inputs, config, act_order, static):
    model, inputs = tiny_inputs
    block = model.model.layers[1]
    for name, x in inputs.items():
        weight = block.get_submodule(name).weight.detach()
        result = gptq_quantize(weight, hessian_of(x), config, act_order=act_order, static_groups=static)
        gptq = output_error(weight, result.quantized.dequantize(), x)
        rtn = output_error(weight, quantize_rtn(weight, config).dequantize(), x)
        assert gptq < 0.5 * rtn, (name, gptq, rtn)
        assert result.dead_columns == 0 and result.damp == 0.01


def test_gptq_with_an_identity_hessian_is_round_to_nearest():
    weight = torch.randn(40, 176)
    config = QuantConfig(4, 128)
    result = gptq_quantize(weight, torch.eye(176) * 3.0, config)
    expected = quantize_rtn(weight, config)
    assert torch.equal(result.quantized.codes, expected.codes)
    assert torch.equal(result.quantized.scales, expected.scales)
    assert torch.equal(result.quantized.zeros, expected.zeros)


@pytest.mark.parametrize("act_order", [False, True])
def test_lazy_block_updates_do_not_change_the_result(tiny_inputs, act_order):
    """Blocks are only a speed device: block boundaries that cut groups (7 vs 32)
    must give the same quantization as one block for the whole row."""
    model, inputs = tiny_inputs
    x = inputs["mlp.down_proj"]
    weight = model.model.layers[1].mlp.down_proj.weight.detach()
    config = QuantConfig(3, 32)
    one = gptq_quantize(weight, hessian_of(x), config, block_size=176, act_order=act_order).quantized
    many = gptq_quantize(weight, hessian_of(x), config, block_size=7, act_order=act_order).quantized
    assert torch.equal(one.g_idx, many.g_idx)
    assert float((one.codes != many.codes).float().mean()) < 1e-3
    assert torch.allclose(one.scales.float(), many.scales.float(), rtol=2e-3)


def test_act_order_records_each_columns_group(tiny_inputs):
    model, inputs = tiny_inputs
    x = inputs["mlp.down_proj"]
    weight = model.model.layers[1].mlp.down_proj.weight.detach()
    hessian = hessian_of(x)
    quantized = gptq_quantize(weight, hessian, QuantConfig(4, 32), act_order=True).quantized
    g_idx = quantized.g_idx.long()
    # groups of 32 (the last: 176 - 5 * 32 = 16) formed in order of decreasing diag(H)
    assert torch.bincount(g_idx).tolist() == [32, 32, 32, 32, 32, 16]
    order = torch.argsort(torch.diag(hessian), descending=True)
    assert torch.equal(g_idx[order], torch.arange(176) // 32)
    # and a QuantizedLinear built from it computes with the same weight
    layer = QuantizedLinear.from_quantized(quantized)
    assert torch.allclose(layer(x[:10]), x[:10] @ quantized.dequantize().T, atol=1e-5)
    static = gptq_quantize(weight, hessian, QuantConfig(4, 32), act_order=True, static_groups=True).quantized
    assert torch.equal(static.g_idx, torch.arange(176, dtype=torch.int32) // 32)


def test_masked_weights_end_exactly_zero_and_the_rest_compensates(tiny_inputs):
    model, inputs = tiny_inputs
    x = inputs["self_attn.q_proj"]
    keep = torch.rand(64, 64, generator=torch.Generator().manual_seed(0)) > 0.5
    # as after a pruning step: the weight already holds the zeros
    pruned = model.model.layers[1].self_attn.q_proj.weight.detach() * keep
    config = QuantConfig(4, 32)
    for act_order in (False, True):
        quantized = gptq_quantize(pruned, hessian_of(x), config, keep=keep, act_order=act_order).quantized
        deq = quantized.dequantize()
        assert torch.all(deq[~keep] == 0.0)
        rtn = quantize_rtn(pruned, config, keep).dequantize()
        assert output_error(pruned, deq, x) < 0.75 * output_error(pruned, rtn, x)


def test_dead_columns_are_rounded_to_nearest_not_lost():
    x = torch.randn(500, 48)
    x[:, [3, 20]] = 0.0
    weight = torch.randn(16, 48)
    result = gptq_quantize(weight, hessian_of(x), QuantConfig(4, 16))
    assert result.dead_columns == 2
    deq = result.quantized.dequantize()
    assert torch.isfinite(deq).all()
    step = result.quantized.scales.float().index_select(1, result.quantized.g_idx.long())
    dead = deq[:, [3, 20]] - weight[:, [3, 20]]
    assert torch.all(dead.abs() <= step[:, [3, 20]] / 2 * (1 + 1e-4))


def test_singular_hessian_gets_more_damping():
    x = torch.randn(3, 32)  # rank 3: H + 0 * I is singular
    result = gptq_quantize(torch.randn(8, 32), hessian_of(x), QuantConfig(4, 16), damp=0.0)
    assert result.damp > 0.0
    assert torch.isfinite(result.quantized.dequantize()).all()


# ---------------------------------------------------------------------------- sequential


def test_layer_sequential_feeds_each_block_the_previous_blocks_outputs(tiny_llama, calibration_batch):
    batches = list(calibration_batch[:3].split(1))
    seen: dict[int, torch.Tensor] = {}

    def process(index, name, block, inputs):
        assert name == f"model.layers.{index}"
        seen[index] = torch.cat(inputs.hidden)
        if index == 0:  # compress block 0: block 1 must see the changed outputs
            with torch.no_grad():
                block.mlp.down_proj.weight.mul_(0.5)

    with torch.no_grad():
        layer_sequential(tiny_llama, batches, process)
        expected = tiny_llama(calibration_batch[:3], output_hidden_states=True).hidden_states
    assert torch.allclose(seen[0], expected[0], atol=1e-6)
    assert torch.allclose(seen[1], expected[1], atol=1e-5)


def test_collect_inputs_records_what_a_full_forward_sees_and_stops_early(tiny_llama, calibration_batch):
    block = tiny_llama.model.layers[0]
    inputs = capture_block_inputs(tiny_llama, list(calibration_batch[:3].split(1)), block)
    wanted = {"self_attn.q_proj": block.self_attn.q_proj, "self_attn.v_proj": block.self_attn.v_proj}
    full: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}
    with torch.no_grad(), record_inputs(wanted, lambda name, x: full[name].append(x)):
        forward_block(block, inputs)
    early: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}
    later_calls = []
    with record_inputs({"mlp.down_proj": block.mlp.down_proj}, lambda name, x: later_calls.append(name)):
        collect_inputs(block, inputs, wanted, lambda name, x: early[name].append(x))
    for name in wanted:
        assert len(early[name]) == 3
        assert all(torch.equal(a, b) for a, b in zip(early[name], full[name], strict=True))
    assert later_calls == []  # the MLP never ran


def test_linear_groups_follow_the_llama_block(tiny_llama, calibration_batch):
    block = tiny_llama.model.layers[0]
    inputs = capture_block_inputs(tiny_llama, list(calibration_batch[:1].split(1)), block)
    modules = {name: module for name, module in block.named_modules() if isinstance(module, torch.nn.Linear)}
    groups = linear_groups(block, modules, inputs)
    assert [sorted(group) for group in groups] == [
        ["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"],
        ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"],
        ["mlp.down_proj"],
    ]


# ---------------------------------------------------------------------------- the method


def logit_error(model, reference, batch) -> float:
    with torch.no_grad():
        return float((model(batch).logits - reference).pow(2).mean())


def test_gptq_is_registered_and_needs_calibration():
    assert get_registry().method("gptq") is GPTQ
    assert GPTQ.needs_calibration and GPTQ.family == "quantize"


@pytest.mark.parametrize("true_sequential", [True, False])
def test_gptq_model_predicts_better_than_rtn(make_context, true_sequential):
    from paqbench.models.embedded import tiny_random_llama

    ctx = make_context()
    held_out = torch.cat(make_context(seed=1).calibration_batches())
    dense = tiny_random_llama()
    with torch.no_grad():
        reference = dense(held_out).logits
    rtn = tiny_random_llama()
    RTN().apply(rtn, RTN.Params(bits=3), ctx)
    gptq = tiny_random_llama()
    info = GPTQ().apply(gptq, GPTQ.Params(bits=3, true_sequential=true_sequential), ctx)
    assert info["layers"] == 14 and info["calibration_windows"] == 8
    assert all(isinstance(m, QuantizedLinear) for m in select_targets(gptq).values())
    assert logit_error(gptq, reference, held_out) < 0.7 * logit_error(rtn, reference, held_out)


def test_prune_then_gptq_keeps_exactly_the_masked_weights_zero(tiny_llama, make_context):
    ctx = make_context()
    Magnitude().apply(tiny_llama, Magnitude.Params(sparsity=0.5), ctx)
    masks = {name: get_mask(module).clone() for name, module in select_targets(tiny_llama).items()}
    GPTQ().apply(tiny_llama, GPTQ.Params(bits=4, act_order=True), ctx)
    for name, layer in select_targets(tiny_llama).items():
        assert isinstance(layer, QuantizedLinear)
        assert torch.all(layer.dequantize()[~masks[name]] == 0.0), name
        assert torch.equal(get_mask(layer), masks[name])


def test_gptq_refuses_quantized_layers_and_targets_outside_blocks(tiny_llama, make_context):
    ctx = make_context()
    with pytest.raises(ValueError, match="lm_head"):
        GPTQ().apply(tiny_llama, GPTQ.Params(targets="lm_head|down_proj"), ctx)
    RTN().apply(tiny_llama, RTN.Params(), ctx)
    with pytest.raises(UnsupportedLayerError):
        GPTQ().apply(tiny_llama, GPTQ.Params(), ctx)


# ---------------------------------------------------------------------------- real model


@pytest.mark.realmodel
def test_gptq_beats_rtn_on_a_real_smollm2_layer(smollm2, make_context):
    """SmolLM2-135M block 2: q_proj (576 inputs: 4 groups of 128 + one of 64) and
    down_proj (1536 inputs), on 8 windows of 256 tokens of the embedded text; also on
    4 held-out windows."""
    model, tokenizer = smollm2
    windows = make_context(tokenizer=tokenizer, n_samples=12, seqlen=256).calibration_batches()
    names = ["self_attn.q_proj", "mlp.down_proj"]
    with torch.no_grad():
        calibration = layer_inputs(model, windows[:8], 2, names)
        held_out = layer_inputs(model, windows[8:], 2, names)
    config = QuantConfig(4, 128)
    for name in names:
        weight = model.model.layers[2].get_submodule(name).weight.detach()
        quantized = gptq_quantize(weight, hessian_of(calibration[name]), config).quantized.dequantize()
        rtn = quantize_rtn(weight, config).dequantize()
        assert output_error(weight, quantized, calibration[name]) < 0.8 * output_error(weight, rtn, calibration[name])
        assert output_error(weight, quantized, held_out[name]) < output_error(weight, rtn, held_out[name])
