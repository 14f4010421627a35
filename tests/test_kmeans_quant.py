"""LUTLinear and the kmeans method: Lloyd fits, exact zero entry, editing, storage, save/load."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from paqbench.layers import UnsupportedLayerError, get_mask, layer_kind, select_targets, set_mask
from paqbench.quant.codebook import lloyd_1d
from paqbench.quant.linear import load_quantized
from paqbench.quant.lut import LUTLinear
from paqbench.quant.packing import pack, unpack
from paqbench.quant.quantizer import QuantConfig, quantize_rtn
from paqbench.registry import get_registry
from paqbench_plugins.methods.quant.kmeans import KMeans

pytestmark = pytest.mark.usefixtures("one_thread")


def heavy_tailed(out_features: int = 64, in_features: int = 300, seed: int = 0) -> torch.Tensor:
    """Laplace-like weights with an outlier column: where a uniform grid wastes levels."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator) * 0.02
    weight = weight * torch.rand(out_features, in_features, generator=generator).mul(3)
    weight[:, 7] *= 8
    return weight


def squared_error(approx: torch.Tensor, weight: torch.Tensor, importance: torch.Tensor | None = None) -> float:
    error = (approx - weight).pow(2)
    if importance is not None:
        error = error * importance
    return float(error.sum())


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group_size", [-1, 128])
def test_lut_error_is_at_most_rtn_and_falls_with_iterations(bits, group_size):
    weight = heavy_tailed()
    rtn = squared_error(quantize_rtn(weight, QuantConfig(bits, group_size)).dequantize(), weight)
    start = squared_error(LUTLinear.from_weight(weight, bits, group_size, iterations=0).dequantize(), weight)
    errors = [squared_error(LUTLinear.from_weight(weight, bits, group_size, iterations=n).dequantize(), weight)
              for n in (1, 3, 20)]
    # iteration 0 is the RTN grid itself (entries rounded to float16)
    assert start == pytest.approx(rtn, rel=1e-2)
    assert errors[0] <= start * (1 + 1e-3)
    assert errors[1] <= errors[0] * (1 + 1e-3) and errors[2] <= errors[1] * (1 + 1e-3)
    assert errors[2] < 0.9 * rtn


def test_lloyd_never_increases_the_weighted_error():
    generator = torch.Generator().manual_seed(1)
    values = torch.randn(6, 200, generator=generator) ** 3
    weights = torch.rand(6, 200, generator=generator)
    centers = torch.linspace(-1, 1, 8).repeat(6, 1)
    fixed = torch.zeros(6, 8, dtype=torch.bool)
    fixed[:, 3] = True
    pinned = centers[0, 3].item()
    history = []

    def error(_, current):
        nearest = (values.unsqueeze(-1) - current.unsqueeze(1)).pow(2).min(dim=-1).values
        history.append(float((weights * nearest).sum()))

    final, codes = lloyd_1d(values, weights, centers, fixed, 30, on_iteration=error)
    assert len(history) >= 2
    assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(history))
    assert bool((final == pinned).any(dim=1).all())  # the fixed center never moved
    assert bool((final[:, 1:] >= final[:, :-1]).all())
    assert torch.equal(codes, (values.unsqueeze(-1) - final.unsqueeze(1)).abs().argmin(dim=-1))


def test_weighted_fit_lowers_the_weighted_error():
    """Important input columns (large E[x^2]) hold small weights, unimportant ones large
    weights: the unweighted fit spends its levels on the large weights, the weighted fit
    on the ones whose error matters."""
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(32, 256, generator=generator) * 0.01
    weight[:, 128:] *= 10
    importance = torch.ones(256)
    importance[128:] = 0.001
    plain = LUTLinear.from_weight(weight, 3).dequantize()
    weighted = LUTLinear.from_weight(weight, 3, importance=importance).dequantize()
    assert squared_error(weighted, weight, importance) < 0.5 * squared_error(plain, weight, importance)
    # and the other way round on the unweighted error: weighting is a trade, not a free lunch
    assert squared_error(weighted, weight) > squared_error(plain, weight)


def test_dequantization_is_the_table_entry_and_codes_round_trip():
    weight = heavy_tailed()
    layer = LUTLinear.from_weight(weight, 3, 128)
    codes = layer.unpack_codes()
    assert torch.equal(unpack(pack(codes, 3), 3, 300), codes) and codes.max() <= 7
    table = layer.lut.float()
    expected = torch.stack([table[o, layer.g_idx.long(), codes[o].long()] for o in range(64)])
    assert torch.equal(layer.dequantize(), expected)
    assert layer.lut.dtype == torch.float16 and layer.lut.shape == (64, 3, 8)  # 128 + 128 + 44
    assert bool((layer.lut == 0).any(dim=-1).all())  # every table holds an exact 0.0
    # each weight sits on its table's nearest entry
    distances = (weight.unsqueeze(-1) - table[:, layer.g_idx.long()]).abs()
    chosen = distances.gather(-1, codes.long().unsqueeze(-1)).squeeze(-1)
    assert bool((chosen <= distances.min(dim=-1).values + 1e-7).all())


def test_storage_bits_per_weight_match_the_documented_layout():
    out_features, in_features = 128, 576
    weights = out_features * in_features
    channel = LUTLinear.from_weight(heavy_tailed(out_features, in_features), 4)
    overhead = (32 * in_features + 4 * 32) / weights  # g_idx and the metadata row
    assert channel.paqbench_storage_bits() / weights == pytest.approx(4 + 16 * 16 / 576 + overhead, rel=1e-12)
    grouped = LUTLinear.from_weight(heavy_tailed(out_features, in_features), 3, 128)
    tables = 5 * 8 * 16 / in_features  # 5 groups of 8 float16 entries per row
    assert grouped.paqbench_storage_bits() / weights == pytest.approx(3 + tables + overhead, rel=1e-12)


def test_pruned_weights_stay_exactly_zero_and_zero_weights_is_exact():
    linear = torch.nn.Linear(300, 64, bias=False)
    with torch.no_grad():
        linear.weight.copy_(heavy_tailed())
    keep = linear.weight.detach().abs() > 0.02
    set_mask(linear, keep)
    layer = LUTLinear.from_linear(linear, 4)
    assert torch.all(layer.dequantize()[~keep] == 0.0)
    assert torch.equal(get_mask(layer), keep)
    before = layer.dequantize()
    more = torch.rand(64, 300, generator=torch.Generator().manual_seed(5)) > 0.3
    layer.zero_weights(more)
    after = layer.dequantize()
    assert torch.all(after[~(keep & more)] == 0.0)
    assert torch.equal(after[keep & more], before[keep & more])
    assert torch.equal(get_mask(layer), keep & more)
    assert layer.paqbench_nonzero() == int(torch.count_nonzero(after))


def test_select_features_equal_slicing_the_dequantized_weight():
    weight = heavy_tailed()
    bias = torch.randn(64)
    layer = LUTLinear.from_weight(weight, 4, 128, bias=bias)
    layer.zero_weights(torch.rand(64, 300, generator=torch.Generator().manual_seed(2)) > 0.5)
    full, mask = layer.dequantize(), get_mask(layer)
    columns = torch.tensor([5, 299, 130, 131, 0, 7])  # groups 0, 2, 1: no group dropped
    layer.select_input_features(columns)
    assert torch.equal(layer.dequantize(), full[:, columns]) and torch.equal(get_mask(layer), mask[:, columns])
    layer.select_input_features(torch.tensor([0, 4, 5]))  # columns 5, 0, 7: group 0 only
    assert layer.n_groups == 1 and layer.lut.shape == (64, 1, 16)
    rows = torch.tensor([63, 1, 1, 20])
    layer.select_output_features(rows)
    expected = full[rows][:, torch.tensor([5, 0, 7])]
    assert torch.equal(layer.dequantize(), expected)
    x = torch.randn(2, 3)
    assert torch.allclose(layer(x), F.linear(x, expected, bias[rows]), atol=1e-6)


def test_kmeans_method_defaults_and_checks(tiny_llama, make_context):
    assert get_registry().method("kmeans") is KMeans and KMeans.family == "quantize"
    assert KMeans.needs_calibration  # listed: `weighted` reads the calibration windows
    info = KMeans().apply(tiny_llama, KMeans.Params(bits=3), make_context())
    targets = select_targets(tiny_llama)
    assert info["layers"] == 14 and all(isinstance(m, LUTLinear) and layer_kind(m) == "quantized"
                                        for m in targets.values())
    assert all(m.n_groups == 1 and m.bits == 3 for m in targets.values())
    with pytest.raises(UnsupportedLayerError, match="quantized"):
        KMeans().apply(tiny_llama, KMeans.Params(), make_context())


@pytest.mark.parametrize("bad", [{"bits": 5}, {"granularity": "row"}, {"group_size": 0}, {"iterations": -1}])
def test_invalid_parameters_are_rejected(bad):
    with pytest.raises(ValidationError):
        KMeans.Params(**bad)


def test_weighted_kmeans_then_prune_then_save_and_load(tiny_llama, make_context, tmp_path):
    """Calibration-weighted fit, quantize-then-prune (magnitude edits the codes), and a
    saved checkpoint that loads back with identical outputs."""
    from paqbench.models.embedded import tiny_random_llama
    from paqbench_plugins.methods.prune.magnitude import Magnitude

    ctx = make_context(n_samples=2, seqlen=32)
    info = KMeans().apply(tiny_llama, KMeans.Params(granularity="group", group_size=32, weighted=True), ctx)
    assert info["calibration_windows"] == 2
    Magnitude().apply(tiny_llama, Magnitude.Params(sparsity=0.5), ctx)
    layer = tiny_llama.model.layers[0].self_attn.o_proj
    assert isinstance(layer, LUTLinear)
    assert 0.49 < 1 - layer.paqbench_nonzero() / layer.paqbench_numel() < 0.52
    mlp = tiny_llama.model.layers[1].mlp
    kept = torch.arange(0, 176, 2)
    for projection in (mlp.gate_proj, mlp.up_proj):
        projection.select_output_features(kept)
    mlp.down_proj.select_input_features(kept)
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        expected = tiny_llama(x).logits
    tiny_llama.save_pretrained(tmp_path, safe_serialization=True)
    fresh = load_quantized(tiny_random_llama(seed=3), tmp_path)
    assert isinstance(fresh.model.layers[0].self_attn.o_proj, LUTLinear)
    assert fresh.model.layers[1].mlp.down_proj.in_features == 88
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, expected)
