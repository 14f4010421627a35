"""VQLinear and the vq method: k-means codebooks, exactness, keep bitmap, slicing, storage, save/load."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from paqbench.layers import UnsupportedLayerError, get_mask, layer_kind, select_targets, set_mask
from paqbench.quant.codebook import kmeans
from paqbench.quant.linear import load_quantized
from paqbench.quant.packing import pack, unpack
from paqbench.quant.vq import VQLinear
from paqbench.registry import get_registry
from paqbench_plugins.methods.quant.vq import VQ

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian(out_features: int = 48, in_features: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed)) * 0.02


def squared_error(approx: torch.Tensor, weight: torch.Tensor) -> float:
    return float((approx - weight).pow(2).sum())


@pytest.mark.parametrize("dim", [1, 2, 4])
def test_weights_with_at_most_k_distinct_vectors_are_reproduced_exactly(dim):
    generator = torch.Generator().manual_seed(dim)
    palette = torch.randint(-8, 8, (16, dim), generator=generator).float() / 64  # float16-exact values
    choice = torch.randint(0, 16, (40 * 96 // dim,), generator=generator)
    weight = palette[choice].reshape(40, 96)
    layer = VQLinear.from_weight(weight, bits=4, dim=dim, iterations=5)
    assert torch.equal(layer.dequantize(), weight)


@pytest.mark.parametrize("bits", [3, 5, 8])
def test_codes_round_trip_through_packing(bits):
    codes = torch.randint(0, 1 << bits, (7, 33), generator=torch.Generator().manual_seed(bits), dtype=torch.uint8)
    assert torch.equal(unpack(pack(codes, bits), bits, 33), codes)
    layer = VQLinear.from_weight(gaussian(), bits=bits, dim=2, iterations=2)
    assert layer.qweight.shape == (48, -(-64 * bits // 8))
    assert int(layer.unpack_codes().max()) < 1 << bits


def test_dequantization_is_the_codeword_and_error_falls_with_iterations():
    weight = gaussian(64, 128)
    errors = [squared_error(VQLinear.from_weight(weight, 6, 2, iterations=n).dequantize(), weight) for n in (0, 2, 8)]
    assert errors[1] <= errors[0] * (1 + 1e-3) and errors[2] <= errors[1] * (1 + 1e-3)
    assert errors[2] < 0.9 * errors[0]
    layer = VQLinear.from_weight(weight, 6, 2, iterations=8)
    codes = layer.unpack_codes().long()
    expected = layer.codebooks.float()[0][codes].reshape(64, 128)
    assert torch.equal(layer.dequantize(), expected)
    # each vector holds its nearest codeword
    vectors = weight.reshape(-1, 2)
    distances = torch.cdist(vectors, layer.codebooks.float()[0]).pow(2)
    chosen = distances.gather(1, codes.reshape(-1, 1)).squeeze(1)
    assert bool((chosen <= distances.min(dim=1).values + 1e-8).all())


def test_lloyd_steps_never_increase_the_error():
    points = torch.randn(3000, 3, generator=torch.Generator().manual_seed(0)) ** 3
    weights = torch.ones_like(points)
    history = []

    def record(_, centers):
        history.append(float(torch.cdist(points, centers).pow(2).min(dim=1).values.sum()))

    kmeans(points, weights, 32, 20, torch.Generator().manual_seed(1), on_iteration=record)
    assert len(history) > 2
    assert all(b <= a * (1 + 1e-5) for a, b in itertools.pairwise(history))


def test_same_seed_same_codebook_and_the_seed_matters():
    weight = gaussian()
    a = VQLinear.from_weight(weight, 5, 2, iterations=1, seed=3)
    b = VQLinear.from_weight(weight, 5, 2, iterations=1, seed=3)
    c = VQLinear.from_weight(weight, 5, 2, iterations=1, seed=4)
    assert torch.equal(a.codebooks, b.codebooks) and torch.equal(a.qweight, b.qweight)
    assert not torch.equal(a.codebooks, c.codebooks)


def test_storage_bits_per_weight_match_the_documented_layout():
    out_features, in_features = 96, 256
    weights = out_features * in_features
    layer = VQLinear.from_weight(gaussian(out_features, in_features), bits=8, dim=2, iterations=1)
    books = 256 * 2 * 16
    indices = 32 * (out_features + in_features) + 6 * 32  # r_idx, col_index, metadata
    assert layer.paqbench_storage_bits() / weights == pytest.approx(8 / 2 + (books + indices) / weights, rel=1e-12)
    per_group = VQLinear.from_weight(gaussian(out_features, in_features), bits=4, dim=4, rows_per_codebook=32,
                                     iterations=1)
    assert per_group.codebooks.shape == (3, 16, 4)
    expected = 4 / 4 + (3 * 16 * 4 * 16 + indices) / weights
    assert per_group.paqbench_storage_bits() / weights == pytest.approx(expected, rel=1e-12)
    # a keep bitmap costs one more bit per weight
    per_group.zero_weights(torch.ones(out_features, in_features, dtype=torch.bool))
    assert per_group.paqbench_storage_bits() / weights == pytest.approx(expected + 1, rel=1e-12)


def test_pruned_weights_stay_exactly_zero_and_are_ignored_by_the_fit():
    linear = torch.nn.Linear(128, 48, bias=False)
    with torch.no_grad():
        linear.weight.copy_(gaussian())
    keep = linear.weight.detach().abs() > 0.015
    set_mask(linear, keep)
    layer = VQLinear.from_linear(linear, bits=6, dim=2, iterations=5)
    deq = layer.dequantize()
    assert torch.all(deq[~keep] == 0.0) and layer.qmask is not None
    assert torch.equal(get_mask(layer), keep)
    # the fit ignores pruned coordinates, so kept weights are reconstructed better than
    # by a fit that must also pull codewords toward the zeros
    unmasked = VQLinear.from_weight(linear.weight.detach(), 6, 2, iterations=5)
    kept_error = squared_error(deq[keep], linear.weight.detach()[keep])
    assert kept_error < squared_error(unmasked.dequantize()[keep], linear.weight.detach()[keep])


def test_zero_weights_gives_exact_zeros_and_leaves_the_rest():
    layer = VQLinear.from_weight(gaussian(), 6, 2, iterations=2)
    assert layer.qmask is None
    before = layer.dequantize()
    keep = torch.rand(48, 128, generator=torch.Generator().manual_seed(1)) > 0.3
    layer.zero_weights(keep)
    after = layer.dequantize()
    assert torch.all(after[~keep] == 0.0) and torch.equal(after[keep], before[keep])
    more = torch.ones_like(keep)
    more[:, :9] = False
    layer.zero_weights(more)
    assert torch.equal(get_mask(layer), keep & more)
    assert layer.paqbench_nonzero() == int(torch.count_nonzero(layer.dequantize()))


def test_select_features_equal_slicing_even_when_vectors_are_split():
    weight = gaussian(48, 128)
    bias = torch.randn(48)
    layer = VQLinear.from_weight(weight, 6, 4, rows_per_codebook=16, bias=bias, iterations=2)
    layer.zero_weights(torch.rand(48, 128, generator=torch.Generator().manual_seed(2)) > 0.5)
    full, mask = layer.dequantize(), get_mask(layer)
    columns = torch.tensor([127, 0, 1, 5, 64, 65, 66, 67, 3])  # splits vectors 0, 1, 31; keeps 16 whole
    layer.select_input_features(columns)
    assert layer.n_vectors == 4  # vectors 31, 0, 1, 16 stay; the other 28 are dropped
    assert torch.equal(layer.dequantize(), full[:, columns])
    assert torch.equal(get_mask(layer), mask[:, columns])
    rows = torch.tensor([47, 0, 0, 20])
    layer.select_output_features(rows)
    assert layer.codebooks.shape[0] == 3
    layer.select_output_features(torch.tensor([1, 2]))  # rows 0, 0: codebook 0 only
    assert layer.codebooks.shape[0] == 1
    expected = full[torch.tensor([0, 0])][:, columns]
    assert torch.equal(layer.dequantize(), expected)
    x = torch.randn(2, 9)
    assert torch.allclose(layer(x), F.linear(x, expected, bias[torch.tensor([0, 0])]), atol=1e-6)


def test_vq_method_checks_widths_and_kinds(tiny_llama, make_context):
    assert get_registry().method("vq") is VQ and VQ.family == "quantize"
    assert VQ.needs_calibration  # listed: `weighted` reads the calibration windows
    with pytest.raises(ValueError, match="dim=3"):
        VQ().apply(tiny_llama, VQ.Params(dim=3), make_context())
    info = VQ().apply(tiny_llama, VQ.Params(codebook_bits=6, iterations=2, targets=r"mlp"), make_context())
    assert info["layers"] == 6
    assert all(isinstance(m, VQLinear) and layer_kind(m) == "quantized"
               for name, m in select_targets(tiny_llama).items() if "mlp" in name)
    with pytest.raises(UnsupportedLayerError, match="quantized"):
        VQ().apply(tiny_llama, VQ.Params(targets=r"mlp"), make_context())


@pytest.mark.parametrize("bad", [{"dim": 0}, {"codebook_bits": 9}, {"rows_per_codebook": 0}, {"k": 256}])
def test_invalid_parameters_are_rejected(bad):
    with pytest.raises(ValidationError):
        VQ.Params(**bad)


def test_prune_then_vq_then_slice_then_save_and_load(tiny_llama, make_context, tmp_path):
    from paqbench.models.embedded import tiny_random_llama
    from paqbench_plugins.methods.prune.magnitude import Magnitude

    ctx = make_context(n_samples=2, seqlen=32)
    Magnitude().apply(tiny_llama, Magnitude.Params(sparsity=0.3, targets=r"self_attn"), ctx)
    VQ().apply(tiny_llama, VQ.Params(codebook_bits=5, iterations=2, weighted=True), ctx)
    o_proj = tiny_llama.model.layers[0].self_attn.o_proj
    assert o_proj.qmask is not None and tiny_llama.model.layers[0].mlp.up_proj.qmask is None
    mlp = tiny_llama.model.layers[1].mlp
    kept = torch.arange(1, 176, 3)  # splits most vectors of down_proj
    for projection in (mlp.gate_proj, mlp.up_proj):
        projection.select_output_features(kept)
    mlp.down_proj.select_input_features(kept)
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        expected = tiny_llama(x).logits
    tiny_llama.save_pretrained(tmp_path, safe_serialization=True)
    fresh = load_quantized(tiny_random_llama(seed=3), tmp_path)
    loaded = fresh.model.layers[0].self_attn.o_proj
    assert isinstance(loaded, VQLinear) and loaded.qmask is not None
    assert fresh.model.layers[1].mlp.down_proj.in_features == kept.numel()
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, expected)
    assert torch.all(loaded.dequantize()[~get_mask(o_proj)] == 0.0)
