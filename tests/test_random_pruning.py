"""Random pruning: exact counts, seeded reproducibility (the run's seed by default),
default targets, earlier masks, quantized layers."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from paqbench.layers import get_mask, select_targets
from paqbench.quant.linear import QuantizedLinear
from paqbench.registry import get_registry
from paqbench_plugins.methods.prune.magnitude import Magnitude
from paqbench_plugins.methods.prune.random import RandomPruning
from paqbench_plugins.methods.quant.rtn import RTN


def prune(model, ctx, **params):
    return RandomPruning().apply(model, RandomPruning.Params(**params), ctx)


def masks(model) -> dict[str, torch.Tensor]:
    return {name: get_mask(module).clone() for name, module in select_targets(model).items()}


def test_registered_as_random():
    assert get_registry().method("random") is RandomPruning and RandomPruning.family == "prune"


def test_exact_count_per_layer_and_embeddings_and_head_untouched(tiny_llama, make_context):
    embed = tiny_llama.model.embed_tokens.weight.clone()
    head = tiny_llama.lm_head.weight.clone()
    info = prune(tiny_llama, make_context(), sparsity=0.37, seed=1)
    for name, module in select_targets(tiny_llama).items():
        assert int((module.weight == 0).sum()) == round(0.37 * module.weight.numel()), name
        assert torch.equal(module.weight == 0, ~get_mask(module))
    assert torch.equal(tiny_llama.model.embed_tokens.weight, embed)
    assert torch.equal(tiny_llama.lm_head.weight, head)
    assert info["layers"] == 14 and info["seed"] == 1


def test_seeded_and_defaulting_to_the_runs_seed(make_context):
    from paqbench.models.embedded import tiny_random_llama

    runs = {}
    for label, ctx_seed, seed in [("a", 0, 5), ("b", 9, 5), ("c", 0, 6), ("d", 6, None)]:
        model = tiny_random_llama(seed=0)
        prune(model, make_context(seed=ctx_seed), sparsity=0.5, seed=seed)
        runs[label] = masks(model)
    same = lambda x, y: all(torch.equal(runs[x][n], runs[y][n]) for n in runs[x])  # noqa: E731
    assert same("a", "b")  # an explicit seed wins over the run's
    assert not same("a", "c")
    assert same("c", "d")  # no seed: the run's seed (6)


def test_not_correlated_with_magnitude(tiny_llama, make_context):
    prune(tiny_llama, make_context(), sparsity=0.5, seed=0)
    module = tiny_llama.model.layers[0].mlp.up_proj
    from paqbench.models.embedded import tiny_random_llama

    original = tiny_random_llama(seed=0).model.layers[0].mlp.up_proj.weight.detach().abs()
    pruned = module.weight == 0
    ratio = float(original[pruned].mean() / original[~pruned].mean())
    assert 0.9 < ratio < 1.1  # magnitude would give far less than 1


def test_second_pass_keeps_earlier_zeros_and_reaches_its_ratio(tiny_llama, make_context):
    ctx = make_context()
    Magnitude().apply(tiny_llama, Magnitude.Params(sparsity=0.2), ctx)
    first = masks(tiny_llama)
    prune(tiny_llama, ctx, sparsity=0.5)
    for name, mask in masks(tiny_llama).items():
        assert not mask[~first[name]].any(), name
        assert int((~mask).sum()) == round(0.5 * mask.numel()), name


def test_quantized_layers_get_the_zero_code(tiny_llama, make_context):
    ctx = make_context()
    RTN().apply(tiny_llama, RTN.Params(bits=3, group_size=32), ctx)
    prune(tiny_llama, ctx, sparsity=0.3)
    for name, layer in select_targets(tiny_llama).items():
        assert isinstance(layer, QuantizedLinear)
        keep = get_mask(layer)
        assert int((~keep).sum()) == round(0.3 * keep.numel())
        assert torch.all(layer.dequantize()[~keep] == 0.0), name


def test_bad_parameters():
    with pytest.raises(ValidationError, match="less than 1"):
        RandomPruning.Params(sparsity=1.0)
    with pytest.raises(ValidationError, match="pattern"):
        RandomPruning.Params(pattern="2:4")
