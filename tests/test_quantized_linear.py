"""QuantizedLinear: grids, the pruning-editing API, accounting, save/load and fast paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paqbench.layers import get_mask, layer_kind, select_targets, set_mask
from paqbench.measure.counting import count_parameters
from paqbench.quant import kernels
from paqbench.quant.linear import QuantizedLinear, load_quantized, replace_module
from paqbench.quant.quantizer import QuantConfig, QuantizedWeight, quantize_rtn
from tests.helpers import needs_int4, needs_int8

pytestmark = pytest.mark.usefixtures("one_thread")


def linear(in_features: int = 576, out_features: int = 96, bias: bool = False, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        layer.weight.normal_(0, 0.05)
        layer.weight[:, 7] *= 20  # an outlier column, as real layers have
    return layer


def half_step_violation(layer: QuantizedLinear, weight: torch.Tensor) -> float:
    """Largest |w - deq| in units of half a quantization step of w's own group (<= 1 ok)."""
    step = layer.scales.float().abs().index_select(1, layer.g_idx.long())
    return float(((weight - layer.dequantize()).abs() / (step / 2)).max())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [128, -1, 32])
def test_dequantized_weights_are_within_half_a_step(bits, group_size):
    source = linear()
    layer = QuantizedLinear.from_linear(source, QuantConfig(bits, group_size, symmetric=False))
    assert half_step_violation(layer, source.weight.detach()) <= 1 + 1e-4
    assert layer.unpack_codes().max() <= (1 << bits) - 1


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [64, -1, 32])
def test_symmetric_grid_is_llama_cpp_q4_0_rule(bits, group_size):
    """scale = m / -mid with m the signed weight of largest magnitude (llama.cpp's
    d = max / -8): m gets code 0 (value -mid * scale = m, up to the float16 scale), the step
    is max|w| / mid, weights within the grid are within half a step, and only weights on
    the short side beyond (mid - 1) * |scale| clip, by at most one step (plus mid times the
    float16 rounding of the scale, 2**-11 relative)."""
    source = linear()
    weight = source.weight.detach()
    config = QuantConfig(bits, group_size, symmetric=True)
    layer = QuantizedLinear.from_linear(source, config)
    mid = 1 << (bits - 1)
    width = 576 if group_size == -1 else group_size
    groups = weight.view(96, -1, width)
    extreme = groups.gather(2, groups.abs().argmax(dim=2, keepdim=True)).squeeze(2)  # signed
    expected = (extreme / -mid).half()
    assert torch.equal(layer.scales, expected)
    assert bool((layer.unpack_zeros() == mid).all())
    codes = layer.unpack_codes().view(96, -1, width)
    assert bool((codes.gather(2, groups.abs().argmax(dim=2, keepdim=True)) == 0).all())
    deq, scale = layer.dequantize(), layer.scales.float().abs().repeat_interleave(width, dim=1)
    inside = weight.abs() <= (mid - 0.5) * scale
    error = (weight - deq).abs()
    assert bool((error[inside] <= scale[inside] / 2 * (1 + 1e-3)).all())
    assert bool((error <= scale * (1 + mid * 2.0**-11)).all())
    assert half_step_violation(layer, weight) <= 2 * (1 + mid * 2.0**-11)


def test_a_width_the_group_size_does_not_divide_gets_a_shorter_last_group():
    source = linear(576, 64)
    layer = QuantizedLinear.from_linear(source, QuantConfig(4, 128))
    assert layer.n_groups == 5
    assert torch.equal(layer.g_idx, torch.arange(576, dtype=torch.int32) // 128)
    assert int((layer.g_idx == 4).sum()) == 64
    # the last group's grid is the min-max grid of its own 64 columns (widened to hold 0)
    tail = source.weight.detach()[:, 512:]
    lo, hi = tail.min(dim=1).values.clamp(max=0), tail.max(dim=1).values.clamp(min=0)
    expected = ((hi - lo) / 15).half()  # rounded up to float16: at most one ulp above
    ulp = torch.nextafter(expected, torch.full_like(expected, 1.0)) - expected
    assert torch.all((layer.scales[:, 4] == expected) | (layer.scales[:, 4] == expected + ulp))
    assert torch.all(layer.scales[:, 4].float() >= (hi - lo) / 15)
    expected = layer.scales[:, 4]
    assert torch.equal(layer.unpack_zeros()[:, 4].float(), torch.round(-lo / expected.float()))
    assert half_step_violation(layer, source.weight.detach()) <= 1 + 1e-4


def test_zero_code_dequantizes_to_exactly_zero_in_every_group():
    layer = QuantizedLinear.from_linear(linear(), QuantConfig(3, 128))
    zero = layer.unpack_zeros().index_select(1, layer.g_idx.long())
    codes = layer.unpack_codes()
    deq = layer.dequantize()
    assert torch.all(deq[codes == zero] == 0)
    assert torch.all(deq[codes != zero] != 0)


def test_reference_forward_is_linear_of_the_dequantized_weight():
    source = linear(bias=True)
    layer = QuantizedLinear.from_linear(source, QuantConfig(4, 128))
    assert layer.kernel == "reference"
    x = torch.randn(2, 5, 576)
    assert torch.allclose(layer(x), F.linear(x, layer.dequantize(), source.bias), atol=1e-6)
    assert layer_kind(layer) == "quantized"


def test_zero_weights_gives_exact_zeros_and_records_the_mask():
    layer = QuantizedLinear.from_linear(linear(), QuantConfig(4, 128))
    before = layer.dequantize()
    keep = torch.rand(96, 576, generator=torch.Generator().manual_seed(1)) > 0.3
    layer.zero_weights(keep)
    after = layer.dequantize()
    assert torch.all(after[~keep] == 0.0)
    assert torch.equal(after[keep], before[keep])
    assert torch.equal(get_mask(layer), keep)
    assert layer_kind(layer) == "quantized"
    assert layer.paqbench_nonzero() == int((after != 0).sum())
    # a second call combines masks: a weight pruned once stays pruned
    more = torch.ones_like(keep)
    more[:, :10] = False
    layer.zero_weights(more)
    assert torch.equal(get_mask(layer), keep & more)
    assert torch.all(layer.dequantize()[~(keep & more)] == 0.0)


def act_order_layer(bits: int = 4, bias: bool = True) -> tuple[QuantizedLinear, nn.Linear]:
    """A layer with a scrambled group index, as act-order GPTQ produces."""
    source = linear(576, 96, bias=bias)
    config = QuantConfig(bits, 128)
    perm = torch.randperm(576, generator=torch.Generator().manual_seed(3))
    quantized = quantize_rtn(source.weight.detach()[:, perm], config)
    inverse = torch.argsort(perm)
    scrambled = QuantizedWeight(
        quantized.codes[:, inverse], quantized.scales, quantized.zeros, quantized.g_idx[inverse], config
    )
    return QuantizedLinear.from_quantized(scrambled, source.bias), source


@pytest.mark.parametrize("bits", [3, 4])
def test_select_input_features_matches_slicing_the_dequantized_weight(bits):
    layer, source = act_order_layer(bits)
    layer.zero_weights(torch.rand(96, 576, generator=torch.Generator().manual_seed(2)) > 0.5)
    full = layer.dequantize()
    mask = get_mask(layer)
    index = torch.randperm(576, generator=torch.Generator().manual_seed(4))[:300]
    x = torch.randn(4, 300)
    layer.select_input_features(index)
    assert layer.in_features == 300 and layer.g_idx.shape == (300,)
    assert torch.equal(layer.dequantize(), full[:, index])
    assert torch.equal(get_mask(layer), mask[:, index])
    assert torch.allclose(layer(x), F.linear(x, full[:, index], source.bias), atol=1e-6)


def test_select_input_features_drops_groups_no_column_uses():
    layer = QuantizedLinear.from_linear(linear(), QuantConfig(4, 128))
    bits_before = layer.paqbench_storage_bits()
    full = layer.dequantize()
    index = torch.arange(100, 300)  # columns of groups 0, 1 and 2 only
    layer.select_input_features(index)
    assert layer.n_groups == 3
    assert torch.equal(layer.g_idx.unique(), torch.tensor([0, 1, 2], dtype=torch.int32))
    assert torch.equal(layer.dequantize(), full[:, index])
    assert layer.paqbench_storage_bits() < bits_before


def test_select_output_features_matches_slicing_rows():
    layer, source = act_order_layer(3)
    layer.zero_weights(torch.rand(96, 576, generator=torch.Generator().manual_seed(5)) > 0.5)
    full = layer.dequantize()
    mask = get_mask(layer)
    index = torch.tensor([95, 0, 17, 17, 40])
    x = torch.randn(3, 576)
    layer.select_output_features(index)
    assert layer.out_features == 5
    assert torch.equal(layer.dequantize(), full[index])
    assert torch.equal(get_mask(layer), mask[index])
    assert torch.allclose(layer(x), F.linear(x, full[index], source.bias[index]), atol=1e-6)


def test_editing_rejects_bad_input():
    layer = QuantizedLinear.from_linear(linear(), QuantConfig(4, 128))
    with pytest.raises(ValueError, match="mask shape"):
        layer.zero_weights(torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(IndexError):
        layer.select_input_features(torch.tensor([576]))
    with pytest.raises(TypeError):
        layer.select_output_features(torch.tensor([0.5]))


def test_storage_bits_of_4_bit_group_128_are_4_plus_scale_and_zero_per_128():
    out_features, in_features = 256, 1024
    layer = QuantizedLinear.from_linear(linear(in_features, out_features), QuantConfig(4, 128))
    weights = out_features * in_features
    per_weight = layer.paqbench_storage_bits() / weights
    # 4-bit codes; per group of 128: a float16 scale and a 4-bit zero; plus the int32
    # group index per column and the 5-int32 metadata row
    expected = 4 + (16 + 4) / 128 + 32 * in_features / weights + 5 * 32 / weights
    assert per_weight == pytest.approx(expected, rel=1e-9)
    assert 4.15 < per_weight < 4.3
    assert layer.paqbench_numel() == weights


def test_params_metric_counts_logical_weights_of_quantized_layers(tiny_llama):
    total_dense, _, bits_dense = count_parameters(tiny_llama)
    for name, module in select_targets(tiny_llama).items():
        replace_module(tiny_llama, name, QuantizedLinear.from_linear(module, QuantConfig(4, 128)))
    total, nonzero, bits = count_parameters(tiny_llama)
    assert total == total_dense
    assert nonzero <= total
    assert bits < 0.6 * bits_dense


def quantize_model(model: nn.Module, config: QuantConfig) -> None:
    for name, module in select_targets(model).items():
        replace_module(model, name, QuantizedLinear.from_linear(module, config))


@pytest.mark.parametrize("config", [QuantConfig(4, 128), QuantConfig(3, 32, True)])
def test_save_pretrained_then_load_gives_identical_outputs(tiny_llama, tmp_path, config):
    quantize_model(tiny_llama, config)
    layer = tiny_llama.model.layers[1].mlp.down_proj
    layer.select_input_features(torch.arange(0, 176, 2))  # irregular groups survive too
    tiny_llama.model.layers[1].mlp.up_proj.select_output_features(torch.arange(88))
    tiny_llama.model.layers[1].mlp.gate_proj.select_output_features(torch.arange(88))
    x = torch.randint(0, 256, (2, 24))
    expected = tiny_llama(x).logits
    tiny_llama.save_pretrained(tmp_path, safe_serialization=True)

    from paqbench.models.embedded import tiny_random_llama

    fresh = tiny_random_llama(seed=123)
    load_quantized(fresh, tmp_path)
    assert isinstance(fresh.model.layers[1].mlp.down_proj, QuantizedLinear)
    assert fresh.model.layers[1].mlp.down_proj.in_features == 88
    assert torch.equal(fresh(x).logits, expected)


def test_saved_checkpoint_holds_packed_bytes(tiny_llama, tmp_path):
    from safetensors import safe_open

    linear_fp16_bytes = sum(m.weight.numel() * 2 for m in select_targets(tiny_llama).values())
    quantize_model(tiny_llama, QuantConfig(4, 128))
    tiny_llama.save_pretrained(tmp_path, safe_serialization=True)
    quant_bytes = 0
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        for key in keys:
            if ".layers." in key and not key.endswith("layernorm.weight"):
                tensor = f.get_tensor(key)
                quant_bytes += tensor.numel() * tensor.element_size()
        qweight = f.get_tensor("model.layers.0.mlp.gate_proj.qweight")
    assert not any(key.endswith("proj.weight") for key in keys)
    assert qweight.dtype == torch.uint8 and qweight.shape == (176, 32)  # 64 4-bit codes = 32 bytes
    # the linear layers take about a quarter of their float16 size (plus scales, g_idx)
    assert 0.25 < quant_bytes / linear_fp16_bytes < 0.33


def test_load_quantized_rejects_a_checkpoint_of_another_shape(tiny_llama, tmp_path):
    quantize_model(tiny_llama, QuantConfig(4, 128))
    state = dict(tiny_llama.state_dict())
    state["model.layers.0.extra.qmeta"] = state["model.layers.0.mlp.up_proj.qmeta"]
    from paqbench.models.embedded import tiny_random_llama

    with pytest.raises(ValueError, match=r"model\.layers\.0\.extra"):
        load_quantized(tiny_random_llama(), state)


def test_pruned_linear_quantizes_with_its_mask_carried_over():
    source = linear()
    keep = source.weight.detach().abs() > 0.04
    set_mask(source, keep)
    layer = QuantizedLinear.from_linear(source, QuantConfig(4, 128))
    assert torch.equal(get_mask(layer), keep)
    assert torch.all(layer.dequantize()[~keep] == 0.0)


# ---------------------------------------------------------------------------- fast paths


def bf16_layer(bits: int, group_size: int, in_features: int = 576, out_features: int = 96) -> QuantizedLinear:
    source = linear(in_features, out_features, bias=True).to(torch.bfloat16)
    return QuantizedLinear.from_linear(source, QuantConfig(bits, group_size))


def reference_output(layer: QuantizedLinear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.dequantize().to(x.dtype), layer.bias.detach().to(x.dtype))


def assert_close_to_exact(layer: QuantizedLinear, out: torch.Tensor, x: torch.Tensor) -> None:
    out = out.detach().float()
    exact = F.linear(x.float(), layer.dequantize(), layer.bias.detach().float())
    reference = reference_output(layer, x).float()
    error = float((out - exact).norm() / exact.norm())
    reference_error = float((reference - exact).norm() / exact.norm())
    # bfloat16 scales inside the kernels cost up to ~1.5% here (the reference: ~0.3%)
    assert error <= max(2 * reference_error, 0.02)


@needs_int4
@pytest.mark.parametrize("group_size", [128, 64, -1])
def test_int4_cpu_fast_path_matches_the_reference(group_size):
    layer = bf16_layer(4, group_size)  # 576 columns: with 128, a shorter last group of 64
    assert layer.kernel == "int4-cpu"
    x = torch.randn(3, 7, 576).to(torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16 and out.shape == (3, 7, 96)
    assert_close_to_exact(layer, out.view(-1, 96), x.view(-1, 576))


@needs_int8
def test_int8_cpu_fast_path_matches_the_reference():
    source = linear(576, 96, bias=True).to(torch.bfloat16)
    layer = QuantizedLinear.from_linear(source, QuantConfig(8, -1, symmetric=True))
    assert layer.kernel == "int8-cpu"
    x = torch.randn(5, 576).to(torch.bfloat16)
    assert_close_to_exact(layer, layer(x), x)
    # asymmetric 8-bit grids are not offered to the int8 kernel (see kernels._int8_cpu)
    assert QuantizedLinear.from_linear(source, QuantConfig(8, -1)).kernel == "reference"


@needs_int4
def test_fast_path_is_rechosen_after_edits_and_follows_the_activation_dtype():
    layer = bf16_layer(4, 128)
    assert layer.kernel == "int4-cpu"
    layer.select_output_features(torch.arange(90))  # 90 rows: the int4 kernel needs multiples of 16
    assert layer.kernel == "reference"
    x = torch.randn(2, 576).to(torch.bfloat16)
    assert torch.equal(layer(x), reference_output(layer, x))
    layer.select_output_features(torch.arange(80))
    assert layer.kernel == "int4-cpu"
    layer(torch.randn(2, 576))  # float32 activations: reference by default
    assert layer.kernel == "reference"


@needs_int4
def test_act_order_layout_falls_back_to_the_reference():
    layer, _ = act_order_layer(4)
    layer = layer.to(torch.bfloat16)
    x = torch.randn(2, 576).to(torch.bfloat16)
    assert torch.equal(layer(x), reference_output(layer, x))
    assert layer.kernel == "reference"


def test_probe_rejects_a_wrong_kernel():
    layer = bf16_layer(4, 128)
    weight = layer.dequantize()

    def kernel(name, run, effective=lambda: weight):
        return kernels.Kernel(name, run, effective)

    right = kernel("right", lambda x: F.linear(x, weight.to(x.dtype)))
    assert kernels.probe(layer, right, torch.bfloat16)
    # computes something other than it claims
    shuffled = kernel("shuffled", lambda x: F.linear(x, weight.to(x.dtype).flip(1)))
    assert not kernels.probe(layer, shuffled, torch.bfloat16)
    # honest about its arithmetic, but its weight is too far from the layer's
    scaled = kernel("scaled", lambda x: F.linear(x, (weight * 1.03).to(x.dtype)), lambda: weight * 1.03)
    assert not kernels.probe(layer, scaled, torch.bfloat16)
    # fails at run time
    def crash(x):
        raise RuntimeError("unsupported shape")
    assert not kernels.probe(layer, kernel("crash", crash), torch.bfloat16)


def test_reference_policy_disables_fast_paths(monkeypatch):
    monkeypatch.setenv(kernels.POLICY_ENV, "reference")
    assert bf16_layer(4, 128).kernel == "reference"
    monkeypatch.setenv(kernels.POLICY_ENV, "bogus")
    with pytest.raises(ValueError, match="PAQBENCH_QUANT_KERNEL"):
        bf16_layer(4, 128)


def test_casting_the_model_keeps_the_stored_scales_in_float16(tiny_llama):
    quantize_model(tiny_llama, QuantConfig(4, 64))
    layer = tiny_llama.model.layers[0].mlp.up_proj
    scales = layer.scales.clone()
    tiny_llama.to(torch.bfloat16)
    assert layer.scales.dtype == torch.float16 and torch.equal(layer.scales, scales)
    x = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        assert tiny_llama(x).logits.dtype == torch.bfloat16
    tiny_llama.float()
    assert torch.equal(layer.scales, scales)


def test_quantize_then_prune_structurally_then_save_and_load(tiny_llama, tmp_path, make_context):
    """RTN, then l1-structured pruning edits the codes (through select_*_features); the
    saved checkpoint loads back into a fresh model with identical outputs."""
    from paqbench.models.embedded import tiny_random_llama
    from paqbench_plugins.methods.prune.l1_structured import L1Structured

    ctx = make_context()
    quantize_model(tiny_llama, QuantConfig(4, 32))
    L1Structured().apply(tiny_llama, L1Structured.Params(ratio=0.25, dim="input"), ctx)
    L1Structured().apply(tiny_llama, L1Structured.Params(ratio=0.25, dim="output", targets="up_proj"), ctx)
    inner = tiny_llama.model.layers[0].mlp.down_proj.layer
    assert isinstance(inner, QuantizedLinear) and inner.in_features == 132
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        expected = tiny_llama(x).logits
    tiny_llama.save_pretrained(tmp_path, safe_serialization=True)
    fresh = load_quantized(tiny_random_llama(seed=9), tmp_path)
    assert isinstance(fresh.model.layers[0].mlp.down_proj.layer, QuantizedLinear)
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, expected)
