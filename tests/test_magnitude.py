"""Magnitude pruning: exact counts, the smallest weights, default targets, masks kept,
unsupported layer kinds refused by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paqbench.layers import UnsupportedLayerError, get_mask, select_targets
from paqbench.plugins.methods.pruning.magnitude import Magnitude


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

    class FakeQuantized(nn.Module):
        paqbench_layer_kind = "quantized"

        def __init__(self):
            super().__init__()
            self.weight = layer.weight

    tiny_llama.model.layers[0].self_attn.q_proj = FakeQuantized()
    with pytest.raises(UnsupportedLayerError) as info:
        prune(tiny_llama, make_context(), sparsity=0.5)
    message = str(info.value)
    assert "model.layers.0.self_attn.q_proj" in message and "step 1 (test)" in message
    assert "quantized" in message
