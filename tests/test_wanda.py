"""Wanda: the score against its formula, reconstruction error against magnitude on a
single Linear and on a tiny-Llama block, exact per-row / per-layer counts, N:M, quantized
layers, earlier masks, and the layer-sequential method."""

from __future__ import annotations

import pytest
import torch

from paqbench.layers import get_mask, select_targets
from paqbench.prune.masks import keep_lowest_dropped
from paqbench.prune.nm import NMPattern, is_nm_sparse, nm_keep_mask
from paqbench.prune.wanda import InputNormAccumulator, wanda_scores
from paqbench.quant.linear import QuantizedLinear
from paqbench.quant.sequential import capture_block_inputs, forward_block, record_inputs
from paqbench_plugins.methods.prune.magnitude import Magnitude
from paqbench_plugins.methods.prune.wanda import Wanda
from paqbench_plugins.methods.quant.rtn import RTN

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- shared helpers


def anisotropic_layer(seed: int = 0, d: int = 128, out: int = 64, n: int = 1024):
    """A weight and inputs ``[n, d]`` whose features differ in scale (log-normal) and are
    correlated, as real LLM activations are."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.randn(d, generator=g))
    mix = torch.eye(d) + torch.randn(d, d, generator=g) / d**0.5
    x = (torch.randn(n, d, generator=g) @ mix) * scale
    return torch.randn(out, d, generator=g), x


def reconstruction_error(weight: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    """``||W X - W' X||_F`` over the tokens of ``x`` ``[n, in]``."""
    return float(((weight.detach().float() - pruned.detach().float()) @ x.T).norm())


def block_linear_inputs(model, batches, index: int = 0) -> dict[str, torch.Tensor]:
    """What every Linear of decoder block ``index`` receives in the dense model, ``[tokens, in]``."""
    blocks = model.model.layers
    with torch.no_grad():
        inputs = capture_block_inputs(model, batches, blocks[0])
        for i in range(index):
            inputs = inputs.with_hidden(forward_block(blocks[i], inputs))
        block = blocks[index]
        names = [n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
        seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        with record_inputs({n: block.get_submodule(n) for n in names},
                           lambda n, x: seen[n].append(x.reshape(-1, x.shape[-1]))):
            forward_block(block, inputs)
    return {n: torch.cat(v).float() for n, v in seen.items()}


def block_errors(method, params, ctx, dense, inputs, index: int = 0) -> dict[str, float]:
    """Per-layer reconstruction error of block ``index`` after pruning a fresh copy of the
    tiny Llama with ``method`` restricted to that block."""
    from paqbench.models.embedded import tiny_random_llama

    model = tiny_random_llama(seed=0)
    method().apply(model, method.Params(targets=rf"layers\.{index}\.", **params), ctx)
    before, after = dense.model.layers[index], model.model.layers[index]
    return {n: reconstruction_error(before.get_submodule(n).weight, after.get_submodule(n).weight, x)
            for n, x in inputs.items()}


def wanda(model, ctx, **params):
    return Wanda().apply(model, Wanda.Params(**params), ctx)


# ---------------------------------------------------------------------------- the score


def test_score_is_weight_magnitude_times_input_norm_in_any_batching():
    weight, x = anisotropic_layer(d=24, out=5, n=300)
    accumulator = InputNormAccumulator(24)
    for chunk in x.split(37):
        accumulator.add(chunk.view(1, -1, 24))
    assert accumulator.rows == 300
    expected = weight.abs() * x.norm(dim=0)
    assert torch.allclose(wanda_scores(weight, accumulator.norms), expected, rtol=1e-5)


@pytest.mark.parametrize("pattern", [None, NMPattern(2, 4)])
def test_single_linear_reconstruction_beats_magnitude(pattern):
    weight, x = anisotropic_layer()
    norms = x.norm(dim=0)
    if pattern is None:
        keep_w = keep_lowest_dropped(wanda_scores(weight, norms), 0.5, per_row=True)
        keep_m = keep_lowest_dropped(weight.abs(), 0.5)
    else:
        keep_w = nm_keep_mask(wanda_scores(weight, norms), pattern)
        keep_m = nm_keep_mask(weight.abs(), pattern)
    assert int((~keep_w).sum()) == int((~keep_m).sum()) == 64 * 64
    ours = reconstruction_error(weight, weight * keep_w, x)
    magnitude = reconstruction_error(weight, weight * keep_m, x)
    assert ours < 0.5 * magnitude, (ours, magnitude)


# ---------------------------------------------------------------------------- the method


def test_row_compare_prunes_exactly_per_row_and_leaves_embeddings_and_head(tiny_llama, make_context):
    embed = tiny_llama.model.embed_tokens.weight.clone()
    head = tiny_llama.lm_head.weight.clone()
    info = wanda(tiny_llama, make_context(n_samples=4), sparsity=0.3)
    expected = total = 0
    for name, module in select_targets(tiny_llama).items():
        expected += module.out_features * round(0.3 * module.in_features)
        total += module.weight.numel()
        zeros_per_row = (module.weight == 0).sum(dim=1)
        assert torch.all(zeros_per_row == round(0.3 * module.in_features)), name
        assert torch.equal(~get_mask(module), module.weight == 0)
    assert torch.equal(tiny_llama.model.embed_tokens.weight, embed)
    assert torch.equal(tiny_llama.lm_head.weight, head)
    assert info["layers"] == 14 and info["calibration_windows"] == 4
    assert info["pruned_weights"] == expected and info["sparsity"] == expected / total


def test_layer_compare_prunes_exactly_per_layer(tiny_llama, make_context):
    wanda(tiny_llama, make_context(n_samples=2), sparsity=0.4, compare="layer")
    for name, module in select_targets(tiny_llama).items():
        assert int((module.weight == 0).sum()) == round(0.4 * module.weight.numel()), name
        rows = (module.weight == 0).sum(dim=1)
        assert rows.min() < rows.max()  # not per row


def test_two_four_pattern_on_every_layer(tiny_llama, make_context):
    info = wanda(tiny_llama, make_context(n_samples=2), pattern="2:4")
    for name, module in select_targets(tiny_llama).items():
        assert is_nm_sparse(module.weight, 2, 4), name
        assert int((module.weight == 0).sum()) == module.weight.numel() // 2, name
    assert info["pattern"] == "2:4" and info["pattern_valid"] is True


def test_block_reconstruction_beats_magnitude(make_context):
    from paqbench.models.embedded import tiny_random_llama

    ctx = make_context()
    dense = tiny_random_llama(seed=0)
    inputs = block_linear_inputs(dense, ctx.calibration_batches())
    ours = block_errors(Wanda, {"sparsity": 0.5}, ctx, dense, inputs)
    magnitude = block_errors(Magnitude, {"sparsity": 0.5}, ctx, dense, inputs)
    for name in inputs:
        assert ours[name] < magnitude[name], (name, ours[name], magnitude[name])
    assert sum(ours.values()) < 0.97 * sum(magnitude.values())


def test_quantize_then_prune_sets_codes_to_the_zero_point(tiny_llama, make_context):
    ctx = make_context(n_samples=2)
    RTN().apply(tiny_llama, RTN.Params(bits=4, group_size=32), ctx)
    before = {n: m.dequantize().clone() for n, m in select_targets(tiny_llama).items()}
    wanda(tiny_llama, ctx, sparsity=0.5)
    for name, layer in select_targets(tiny_llama).items():
        assert isinstance(layer, QuantizedLinear)
        keep = get_mask(layer)
        deq = layer.dequantize()
        assert torch.all(deq[~keep] == 0.0), name
        assert torch.equal(deq[keep], before[name][keep])  # kept codes untouched
        assert torch.all((~keep).sum(dim=1) >= round(0.5 * layer.in_features))  # exact zeros of RTN count too
        assert layer.paqbench_nonzero() <= keep.sum()


def test_second_pass_keeps_earlier_zeros(tiny_llama, make_context):
    ctx = make_context(n_samples=2)
    Magnitude().apply(tiny_llama, Magnitude.Params(sparsity=0.2), ctx)
    first = {n: get_mask(m).clone() for n, m in select_targets(tiny_llama).items()}
    wanda(tiny_llama, ctx, sparsity=0.5)
    for name, module in select_targets(tiny_llama).items():
        mask = get_mask(module)
        assert not mask[~first[name]].any(), name
        target = round(0.5 * module.in_features)
        earlier = (~first[name]).sum(dim=1)
        pruned = (~mask).sum(dim=1)
        assert torch.all(pruned == torch.clamp(earlier, min=target)), name


def test_clear_errors(tiny_llama, make_context):
    from pydantic import ValidationError

    with pytest.raises(ValueError, match="lm_head"):
        wanda(tiny_llama, make_context(n_samples=1), targets="lm_head")
    with pytest.raises(ValidationError, match="compare"):
        Wanda.Params(compare="column")
    with pytest.raises(ValidationError, match="contradicts"):
        Wanda.Params(pattern="2:4", sparsity=0.7)
    with pytest.raises(ValueError, match=r"multiple of 32.*down_proj.*176"):  # 176 = 5 * 32 + 16
        wanda(tiny_llama, make_context(n_samples=1), pattern="1:32")


def test_a_layer_that_cannot_zero_weights_is_refused_before_any_work(tiny_llama, make_context):
    """Wanda asks every target for zero-weights up front (the layer contract's ``require``),
    so a layer in the last block that lacks it fails the step before the first block is
    pruned, not mid-way through a half-pruned model."""
    from paqbench.layers import CompressedLayer, UnsupportedLayerError

    class NoZeroing(CompressedLayer):
        paqbench_layer_kind = "quantized"  # a kind wanda accepts, without the capability it needs
        capabilities = frozenset()

        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            self.inner = linear

        def dequantize(self) -> torch.Tensor:
            return self.inner.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    mlp = tiny_llama.model.layers[-1].mlp
    mlp.down_proj = NoZeroing(mlp.down_proj)
    before = {name: p.detach().clone() for name, p in tiny_llama.named_parameters()}
    with pytest.raises(UnsupportedLayerError, match=r"layers\.\d+\.mlp\.down_proj.*zero-weights.*'wanda' needs"):
        wanda(tiny_llama, make_context(n_samples=1))
    assert all(torch.equal(p, before[name]) for name, p in tiny_llama.named_parameters())
