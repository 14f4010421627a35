"""Magnitude pruning: exact counts, the smallest weights, default targets, masks kept,
global scope, N:M, quantized and structurally pruned layers, unsupported layer kinds
refused by name, clear parameter errors."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from paqbench.layers import UnsupportedLayerError, get_mask, select_targets
from paqbench.prune.nm import is_nm_sparse
from paqbench.quant.linear import QuantizedLinear
from paqbench_plugins.methods.prune.magnitude import Magnitude


def prune(model, ctx, **params):
    return Magnitude().apply(model, Magnitude.Params(**params), ctx)


def test_exact_sparsity_per_targeted_layer(tiny_llama, make_context):
    original = {n: m.weight.clone() for n, m in select_targets(tiny_llama).items()}
    info = prune(tiny_llama, make_context(), sparsity=0.3)
    for name, module in select_targets(tiny_llama).items():
        weight = module.weight
        n_pruned = round(0.3 * weight.numel())
        assert int((weight == 0).sum()) == n_pruned, name
        kept = original[name].abs()[weight != 0]
        dropped = original[name].abs()[weight == 0]
        assert dropped.max() <= kept.min()  # exactly the smallest magnitudes went
        assert torch.equal(weight[weight != 0], original[name][weight != 0])  # the rest untouched
    assert info["sparsity"] == pytest.approx(0.3, abs=1e-4) and info["layers"] == 14


def test_embeddings_and_lm_head_untouched(tiny_llama, make_context):
    embed = tiny_llama.model.embed_tokens.weight.clone()
    head = tiny_llama.lm_head.weight.clone()
    prune(tiny_llama, make_context(), sparsity=0.5)
    assert torch.equal(tiny_llama.model.embed_tokens.weight, embed)
    assert torch.equal(tiny_llama.lm_head.weight, head)


def test_regex_targets_override(tiny_llama, make_context):
    prune(tiny_llama, make_context(), sparsity=0.5, targets=r"mlp\.down_proj")
    for name, module in tiny_llama.named_modules():
        if isinstance(module, nn.Linear):
            zeros = int((module.weight == 0).sum())
            assert (zeros > 0) == name.endswith("mlp.down_proj"), name


def test_second_pass_keeps_first_zeros_and_reaches_new_ratio(tiny_llama, make_context):
    ctx = make_context()
    prune(tiny_llama, ctx, sparsity=0.2)
    first = {n: get_mask(m).clone() for n, m in select_targets(tiny_llama).items()}
    prune(tiny_llama, ctx, sparsity=0.5)
    for name, module in select_targets(tiny_llama).items():
        mask = get_mask(module)
        assert not mask[~first[name]].any()  # pruned once, pruned forever
        assert int((~mask).sum()) == round(0.5 * mask.numel())


def test_pruned_model_still_runs(tiny_llama, make_context):
    prune(tiny_llama, make_context(), sparsity=0.5)
    out = tiny_llama(torch.tensor([[256, 72, 105]])).logits
    assert torch.isfinite(out).all()


def test_unsupported_layer_kind_is_refused_naming_layer_and_step(tiny_llama, make_context):
    layer = tiny_llama.model.layers[0].self_attn.q_proj

    class FakeLowRank(nn.Module):
        paqbench_layer_kind = "low-rank"

        def __init__(self):
            super().__init__()
            self.weight = layer.weight

    tiny_llama.model.layers[0].self_attn.q_proj = FakeLowRank()
    with pytest.raises(UnsupportedLayerError) as info:
        prune(tiny_llama, make_context(), sparsity=0.5)
    message = str(info.value)
    assert "model.layers.0.self_attn.q_proj" in message and "step 1 (test)" in message
    assert "low-rank" in message


def test_global_scope_drops_the_smallest_across_all_layers(tiny_llama, make_context):
    with torch.no_grad():
        tiny_llama.model.layers[1].mlp.up_proj.weight.mul_(0.5)  # a layer of smaller weights
    original = {n: m.weight.clone() for n, m in select_targets(tiny_llama).items()}
    total = sum(w.numel() for w in original.values())
    info = prune(tiny_llama, make_context(), sparsity=0.4, scope="global")
    kept = torch.cat([original[n][m.weight != 0].abs() for n, m in select_targets(tiny_llama).items()])
    dropped = torch.cat([original[n][m.weight == 0].abs() for n, m in select_targets(tiny_llama).items()])
    assert dropped.numel() == round(0.4 * total) == info["pruned_weights"]
    assert dropped.max() <= kept.min()
    small = float((tiny_llama.model.layers[1].mlp.up_proj.weight == 0).float().mean())
    assert small > 0.6  # it loses far more than 40%: ranked globally, not per layer


@pytest.mark.parametrize("pattern,zeros", [("2:4", 2), ("4:8", 4), ("1:4", 1)])
def test_nm_pattern_drops_the_smallest_of_every_group(tiny_llama, make_context, pattern, zeros):
    original = {n: m.weight.clone() for n, m in select_targets(tiny_llama).items()}
    n, m = (int(v) for v in pattern.split(":"))
    info = prune(tiny_llama, make_context(), pattern=pattern)
    for name, module in select_targets(tiny_llama).items():
        weight = module.weight
        assert is_nm_sparse(weight, n, m) and not is_nm_sparse(weight, n + 1, m), name
        assert int((weight == 0).sum()) == weight.numel() * zeros // m
        groups = original[name].abs().view(weight.shape[0], -1, m)
        pruned = (weight == 0).view(weight.shape[0], -1, m)
        assert torch.all(groups.masked_fill(~pruned, -1).amax(-1) <= groups.masked_fill(pruned, 1e9).amin(-1))
    assert info["pattern_valid"] is True and info["sparsity"] == pytest.approx(n / m)


def test_quantize_then_prune_gives_exact_zeros_in_the_codes(tiny_llama, make_context):
    from paqbench_plugins.methods.quant.rtn import RTN

    ctx = make_context()
    RTN().apply(tiny_llama, RTN.Params(bits=4, group_size=32), ctx)
    before = {n: m.dequantize().clone() for n, m in select_targets(tiny_llama).items()}
    prune(tiny_llama, ctx, sparsity=0.5)
    for name, layer in select_targets(tiny_llama).items():
        assert isinstance(layer, QuantizedLinear)
        keep = get_mask(layer)
        deq = layer.dequantize()
        assert int((~keep).sum()) == round(0.5 * keep.numel()), name
        assert torch.all(deq[~keep] == 0.0) and torch.equal(deq[keep], before[name][keep]), name
        assert before[name].abs()[~keep].max() <= before[name].abs()[keep].min()


def test_prunes_the_inner_layer_of_a_structured_wrapper(tiny_llama, make_context):
    from paqbench_plugins.methods.prune.l1_structured import L1Structured

    ctx = make_context()
    L1Structured().apply(tiny_llama, L1Structured.Params(ratio=0.25, targets=r"mlp\.down_proj"), ctx)
    prune(tiny_llama, ctx, pattern="2:4", targets=r"mlp\.down_proj")
    inner = tiny_llama.model.layers[0].mlp.down_proj.layer
    assert inner.weight.shape[1] == 132 and is_nm_sparse(inner.weight, 2, 4)
    assert torch.isfinite(tiny_llama(torch.tensor([[256, 72, 105]])).logits).all()


def test_bad_parameters_are_clear():
    with pytest.raises(ValidationError, match="contradicts pattern '2:4'"):
        Magnitude.Params(pattern="2:4", sparsity=0.6)
    with pytest.raises(ValidationError, match="scope: layer"):
        Magnitude.Params(pattern="2:4", scope="global")
    with pytest.raises(ValidationError, match="N:M"):
        Magnitude.Params(pattern="half")
    with pytest.raises(ValidationError, match="less than 1"):
        Magnitude.Params(sparsity=1.0)
    with pytest.raises(ValidationError, match="scope"):
        Magnitude.Params(scope="model")
