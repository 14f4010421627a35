"""SparseGPT: the algorithm against its math (identity Hessian = magnitude, one pruned
column = least squares, sparsity 0 = no change), reconstruction error against magnitude,
exact counts and N:M, joint quantization with exact zeros, quantize-then-prune on the
layer's own grid, prune-then-GPTQ, earlier masks, and clear errors."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from paqbench.layers import get_mask, select_targets
from paqbench.prune.masks import keep_lowest_dropped
from paqbench.prune.nm import NMPattern, is_nm_sparse, nm_keep_mask
from paqbench.prune.sparsegpt import sparsegpt_prune
from paqbench.quant.gptq import HessianAccumulator
from paqbench.quant.linear import QuantizedLinear
from paqbench.quant.quantizer import QuantConfig, quantize_rtn
from paqbench_plugins.methods.prune.magnitude import Magnitude
from paqbench_plugins.methods.prune.sparsegpt import SparseGPT
from paqbench_plugins.methods.quant.gptq import GPTQ
from paqbench_plugins.methods.quant.rtn import RTN
from tests.test_wanda import anisotropic_layer, block_errors, block_linear_inputs, reconstruction_error

pytestmark = pytest.mark.usefixtures("one_thread")


def hessian_of(x: torch.Tensor) -> torch.Tensor:
    accumulator = HessianAccumulator(x.shape[1])
    accumulator.add(x)
    return accumulator.hessian


def sparsegpt(model, ctx, **params):
    return SparseGPT().apply(model, SparseGPT.Params(**params), ctx)


# ---------------------------------------------------------------------------- the algorithm


def test_sparsity_zero_reproduces_the_weight():
    weight, x = anisotropic_layer()
    result = sparsegpt_prune(weight, hessian_of(x), sparsity=0.0)
    assert torch.equal(result.weight, weight) and bool(result.keep.all())
    assert result.loss == 0.0


@pytest.mark.parametrize("pattern", [None, NMPattern(2, 4)])
def test_identity_hessian_is_magnitude_pruning_without_updates(pattern):
    weight = torch.randn(16, 96, generator=torch.Generator().manual_seed(1))
    result = sparsegpt_prune(weight, torch.eye(96) * 3.0, sparsity=0.5, pattern=pattern, block_size=96)
    keep = keep_lowest_dropped(weight.abs(), 0.5) if pattern is None else nm_keep_mask(weight.abs(), pattern)
    assert torch.equal(result.keep, keep)
    assert torch.equal(result.weight, weight * keep)


def test_pruning_one_column_gives_the_least_squares_update():
    """OBS is exact for a single removed column: the kept weights become the least-squares
    fit of the dense layer's outputs."""
    weight, x = anisotropic_layer(d=32, out=6, n=400)
    weight[:, 0] = 1e-3 * torch.sign(weight[:, 0])  # column 0: by far the lowest saliency
    result = sparsegpt_prune(weight, hessian_of(x), sparsity=1 / 32, block_size=32, damp=0.0)
    keep = torch.ones_like(weight, dtype=torch.bool)
    keep[:, 0] = False
    assert torch.equal(result.keep, keep)
    x64 = x.double()
    target = x64 @ weight.double().T
    expected = torch.linalg.lstsq(x64[:, 1:], target).solution.T
    correction = result.weight[:, 1:].double() - weight[:, 1:].double()
    expected_correction = expected - weight[:, 1:].double()
    assert float(expected_correction.norm()) > 1e-3  # the update is real, not a no-op
    assert float((correction - expected_correction).norm()) < 1e-2 * float(expected_correction.norm())
    assert torch.all(result.weight[:, 0] == 0)


@pytest.mark.parametrize("pattern", [None, NMPattern(2, 4), NMPattern(4, 8)])
def test_single_linear_exact_counts_and_reconstruction_beats_magnitude(pattern):
    weight, x = anisotropic_layer()
    result = sparsegpt_prune(weight, hessian_of(x), sparsity=0.5, pattern=pattern, block_size=32)
    assert int((result.weight == 0).sum()) == int((~result.keep).sum()) == weight.numel() // 2
    assert torch.all(result.weight[~result.keep] == 0)
    if pattern is None:
        magnitude = weight * keep_lowest_dropped(weight.abs(), 0.5)
    else:
        assert is_nm_sparse(result.weight, pattern.n, pattern.m)
        magnitude = weight * nm_keep_mask(weight.abs(), pattern)
    ours = reconstruction_error(weight, result.weight, x)
    assert ours < 0.4 * reconstruction_error(weight, magnitude, x)


def test_exact_count_for_odd_sizes():
    weight, x = anisotropic_layer(d=100, out=7, n=300)
    result = sparsegpt_prune(weight, hessian_of(x), sparsity=0.37, block_size=16)
    assert int((~result.keep).sum()) == round(0.37 * 700)


def test_joint_quantization_codes_of_pruned_weights_are_the_zero_point():
    weight, x = anisotropic_layer(d=160)  # 160 columns at group size 64: groups 64, 64, 32
    config = QuantConfig(4, 64)
    result = sparsegpt_prune(weight, hessian_of(x), sparsity=0.5, quant=config, block_size=32)
    q = result.quantized
    zero = q.zeros.long().index_select(1, q.g_idx.long())
    assert torch.equal(q.codes.long() == zero, (q.dequantize() == 0))
    assert torch.all(q.codes.long()[~result.keep] == zero[~result.keep])
    assert int((~result.keep).sum()) == weight.numel() // 2
    # better than magnitude pruning followed by round-to-nearest on the same grid size
    keep = keep_lowest_dropped(weight.abs(), 0.5)
    rtn = quantize_rtn(weight * keep, config, keep).dequantize()
    assert reconstruction_error(weight, q.dequantize(), x) < 0.4 * reconstruction_error(weight, rtn, x)


# ---------------------------------------------------------------------------- the method


def test_method_at_sparsity_zero_leaves_the_model_unchanged(tiny_llama, make_context):
    before = {n: p.clone() for n, p in tiny_llama.named_parameters()}
    sparsegpt(tiny_llama, make_context(n_samples=2), sparsity=0.0)
    for name, parameter in tiny_llama.named_parameters():
        assert torch.equal(parameter, before[name]), name


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_exact_sparsity_per_layer_and_head_untouched(tiny_llama, make_context, pattern):
    head = tiny_llama.lm_head.weight.clone()
    embed = tiny_llama.model.embed_tokens.weight.clone()
    params = {"pattern": pattern} if pattern else {"sparsity": 0.3}
    info = sparsegpt(tiny_llama, make_context(n_samples=4), **params)
    for name, module in select_targets(tiny_llama).items():
        zeros = module.weight == 0
        assert torch.equal(zeros, ~get_mask(module)), name
        if pattern:
            assert is_nm_sparse(module.weight, 2, 4), name
            assert int(zeros.sum()) == module.weight.numel() // 2
        else:
            assert int(zeros.sum()) == round(0.3 * module.weight.numel()), name
    assert torch.equal(tiny_llama.lm_head.weight, head)
    assert torch.equal(tiny_llama.model.embed_tokens.weight, embed)
    assert info["layers"] == 14 and info["calibration_windows"] == 4 and info["loss"] > 0


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_block_reconstruction_beats_magnitude(make_context, pattern):
    from paqbench.models.embedded import tiny_random_llama

    ctx = make_context()
    dense = tiny_random_llama(seed=0)
    inputs = block_linear_inputs(dense, ctx.calibration_batches())
    params = {"pattern": pattern} if pattern else {"sparsity": 0.5}
    ours = block_errors(SparseGPT, {**params, "true_sequential": False}, ctx, dense, inputs)
    magnitude = block_errors(Magnitude, params, ctx, dense, inputs)
    for name in inputs:
        assert ours[name] < 0.8 * magnitude[name], (name, ours[name], magnitude[name])


def test_joint_quantization_gives_quantized_layers_with_exact_zeros(tiny_llama, make_context):
    info = sparsegpt(tiny_llama, make_context(n_samples=2), pattern="2:4", bits=4, group_size=32)
    for name, layer in select_targets(tiny_llama).items():
        assert isinstance(layer, QuantizedLinear), name
        keep = get_mask(layer)
        deq = layer.dequantize()
        assert torch.all(deq[~keep] == 0) and is_nm_sparse(deq, 2, 4), name
    assert 4 < info["bits_per_weight"] < 6 and info["pattern_valid"] is True


def test_quantize_then_prune_requantizes_on_the_layers_own_grid(tiny_llama, make_context):
    ctx = make_context(n_samples=2)
    RTN().apply(tiny_llama, RTN.Params(bits=4, group_size=32), ctx)
    grids = {n: (m.scales.clone(), m.qzeros.clone(), m.g_idx.clone()) for n, m in select_targets(tiny_llama).items()}
    sparsegpt(tiny_llama, ctx, sparsity=0.5)
    for name, layer in select_targets(tiny_llama).items():
        assert isinstance(layer, QuantizedLinear), name
        scales, qzeros, g_idx = grids[name]
        assert torch.equal(layer.scales, scales) and torch.equal(layer.qzeros, qzeros)
        assert torch.equal(layer.g_idx, g_idx)
        keep = get_mask(layer)
        assert torch.all(layer.dequantize()[~keep] == 0.0), name
        assert int((~keep).sum()) >= round(0.5 * keep.numel())
    with pytest.raises(ValueError, match=r"already quantized.*leave `bits` unset"):
        sparsegpt(tiny_llama, ctx, sparsity=0.6, bits=4)


def test_prune_then_gptq_keeps_zeros(tiny_llama, make_context):
    ctx = make_context(n_samples=2)
    sparsegpt(tiny_llama, ctx, pattern="2:4")
    masks = {n: get_mask(m).clone() for n, m in select_targets(tiny_llama).items()}
    GPTQ().apply(tiny_llama, GPTQ.Params(bits=4, group_size=32), ctx)
    for name, layer in select_targets(tiny_llama).items():
        assert isinstance(layer, QuantizedLinear)
        assert torch.all(layer.dequantize()[~masks[name]] == 0.0), name
        assert is_nm_sparse(layer.dequantize(), 2, 4), name


def test_second_pass_keeps_earlier_zeros(tiny_llama, make_context):
    ctx = make_context(n_samples=2)
    Magnitude().apply(tiny_llama, Magnitude.Params(sparsity=0.2), ctx)
    first = {n: get_mask(m).clone() for n, m in select_targets(tiny_llama).items()}
    sparsegpt(tiny_llama, ctx, sparsity=0.5, block_size=16)
    for name, module in select_targets(tiny_llama).items():
        mask = get_mask(module)
        assert not mask[~first[name]].any(), name
        assert torch.equal(module.weight == 0, ~mask)
        assert int((~mask).sum()) == round(0.5 * mask.numel()), name  # spread-out earlier zeros: exact


def test_clear_errors(tiny_llama, make_context):
    with pytest.raises(ValidationError, match="block_size 6 must be a multiple of the pattern's M=4"):
        SparseGPT.Params(pattern="2:4", block_size=6)
    with pytest.raises(ValidationError, match="bits"):
        SparseGPT.Params(bits=5)
    with pytest.raises(ValidationError, match="group_size must be positive"):
        SparseGPT.Params(bits=4, group_size=0)
    with pytest.raises(ValidationError, match="contradicts"):
        SparseGPT.Params(pattern="4:8", sparsity=0.25)
    with pytest.raises(ValueError, match="outside"):
        sparsegpt(tiny_llama, make_context(n_samples=1), targets="lm_head")
