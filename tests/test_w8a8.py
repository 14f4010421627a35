"""W8A8 int8 dynamic: the layer's integer math, its error bound, paths, editing, save/load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paqbench.layers import UnsupportedLayerError, get_mask, layer_kind, select_targets, set_mask
from paqbench.measure.counting import count_parameters
from paqbench.models.embedded import tiny_random_llama
from paqbench.quant import kernels
from paqbench.quant.linear import load_quantized
from paqbench.quant.w8a8 import Int8DynamicLinear, probe_exact, reference_accumulate
from paqbench.registry import get_registry
from paqbench_plugins.methods.prune.l1_structured import L1Structured
from paqbench_plugins.methods.prune.magnitude import Magnitude
from paqbench_plugins.methods.quant.rtn import RTN
from paqbench_plugins.methods.quant.w8a8 import W8A8

pytestmark = pytest.mark.usefixtures("one_thread")


def linear(in_features: int = 576, out_features: int = 96, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        layer.weight.normal_(0, 0.05)
        layer.weight[:, 7] *= 20
    return layer


def integer_reference(layer: Int8DynamicLinear, x: torch.Tensor) -> torch.Tensor:
    """The spec, written independently: per-row symmetric int8 of x, int64 accumulation,
    then acc * s_x * s_w (+ bias) in float32."""
    rows = x.reshape(-1, x.shape[-1]).float()
    amax = rows.abs().amax(dim=1, keepdim=True)
    s_x = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    q = torch.clamp(torch.round(rows / s_x), -127, 127)
    acc = q.long() @ layer.weight_int8.long().T
    out = (acc.float() * s_x) * layer.weight_scale[None, :]
    if layer.bias is not None:
        out = out + layer.bias.detach()
    return out.reshape(*x.shape[:-1], -1)


def test_weights_are_per_channel_symmetric_int8_within_half_a_step():
    source = linear()
    layer = Int8DynamicLinear.from_linear(source)
    weight = source.weight.detach()
    assert layer.weight_int8.dtype == torch.int8 and int(layer.weight_int8.abs().max()) == 127
    assert torch.allclose(layer.weight_scale, weight.abs().amax(dim=1) / 127)
    assert float(((weight - layer.dequantize()).abs() / (layer.weight_scale[:, None] / 2)).max()) <= 1 + 1e-5
    assert layer_kind(layer) == "quantized"


@pytest.mark.parametrize("policy", ["reference", "auto", "any"])
@pytest.mark.parametrize("in_features", [576, 1536])  # 1536 > 1024: the reference path sums chunks
def test_forward_is_exactly_the_integer_math(monkeypatch, policy, in_features):
    monkeypatch.setenv(kernels.POLICY_ENV, policy)
    layer = Int8DynamicLinear.from_linear(linear(in_features, 64))
    x = torch.randn(2, 5, in_features) * 3
    x[0, 1] = 0.0  # an all-zero token
    out = layer(x)
    if policy == "reference":
        assert layer.kernel == "reference"
    assert layer.kernel in ("reference", "onednn-int8", "int_mm-cpu")
    assert torch.equal(out, integer_reference(layer, x)), layer.kernel
    assert torch.all(out[0, 1] == layer.bias)


def test_error_against_float_is_within_the_rounding_bound():
    """|y - x W^T| <= s_w/2 * ||x||_1 + s_x/2 * ||W_q row||_1 per output (each weight at most
    half a step off, each activation at most half a step off); and the total error is what
    independent uniform rounding noise predicts: variance step^2 / 12 per rounded value."""
    source = linear(bias=False)
    layer = Int8DynamicLinear.from_linear(source)
    x = torch.randn(64, 576)
    x[:, 3] *= 10  # an activation outlier widens the token's step
    exact = x @ source.weight.detach().T
    out = layer(x)
    s_x = x.abs().amax(dim=1, keepdim=True) / 127
    bound = (layer.weight_scale[None, :] / 2) * x.abs().sum(1, keepdim=True) \
        + (s_x / 2) * layer.dequantize().abs().sum(1)[None, :]
    assert torch.all((out - exact).abs() <= bound * (1 + 1e-4) + 1e-5)
    predicted = ((layer.weight_scale[None, :] ** 2 / 12) * x.pow(2).sum(1, keepdim=True)
                 + (s_x**2 / 12) * layer.dequantize().pow(2).sum(1)[None, :]).sum().sqrt()
    ratio = float((out - exact).norm() / predicted)
    assert 0.7 < ratio < 1.4, ratio


def test_the_probe_rejects_a_path_that_saturates_like_avx2_int8():
    """A path that adds products in pairs saturated to 16 bits (u8 x s8 without VNNI) is
    right for small values and wrong for full-range ones: the worst-case probe catches it."""

    def saturating(weight_int8):
        w = weight_int8.long()

        def run(xq):
            u = xq.long() + 128  # uint8 activations with zero point 128
            products = u[:, None, :] * w[None, :, :]
            pairs = products.reshape(*products.shape[:2], -1, 2).sum(-1).clamp(-32768, 32767)
            return (pairs.sum(-1) - 128 * w.sum(1)[None, :]).double()

        return run

    weight = Int8DynamicLinear.from_linear(linear(64, 16)).weight_int8
    small = torch.randint(-20, 21, (3, 64), dtype=torch.int8)
    assert torch.equal(saturating(weight)(small), (small.long() @ weight.long().T).double())
    assert probe_exact(saturating, weight) is None
    assert probe_exact(reference_accumulate, weight) is not None


def test_zero_weights_and_selecting_features_stay_consistent():
    layer = Int8DynamicLinear.from_linear(linear())
    full = layer.dequantize()
    keep = torch.rand(96, 576, generator=torch.Generator().manual_seed(1)) > 0.4
    layer.zero_weights(keep)
    assert torch.all(layer.dequantize()[~keep] == 0.0)
    assert torch.equal(layer.dequantize()[keep], full[keep])
    assert layer.paqbench_nonzero() == int((layer.weight_int8 != 0).sum()) + 96
    more = torch.ones_like(keep)
    more[:, :10] = False
    layer.zero_weights(more)
    assert torch.equal(get_mask(layer), keep & more)

    masked = layer.dequantize()
    inputs = torch.randperm(576, generator=torch.Generator().manual_seed(2))[:300]
    outputs = torch.tensor([95, 0, 17, 40])
    bias = layer.bias.detach().clone()
    layer.select_input_features(inputs)
    layer.select_output_features(outputs)
    assert (layer.in_features, layer.out_features) == (300, 4)
    assert torch.equal(layer.dequantize(), masked[outputs][:, inputs])
    assert torch.equal(get_mask(layer), (keep & more)[outputs][:, inputs])
    assert torch.equal(layer.bias.detach(), bias[outputs])
    x = torch.randn(3, 300)
    assert torch.equal(layer(x), integer_reference(layer, x))
    with pytest.raises(ValueError, match="mask shape"):
        layer.zero_weights(torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(IndexError):
        layer.select_input_features(torch.tensor([300]))


def test_storage_is_8_bits_plus_a_row_scale():
    layer = Int8DynamicLinear.from_linear(linear(1024, 256, bias=False))
    assert layer.paqbench_storage_bits() / (1024 * 256) == pytest.approx(8 + 32 / 1024 + 64 / (1024 * 256))
    assert layer.paqbench_numel() == 1024 * 256


def test_casting_keeps_float32_scales_and_runs_in_bfloat16():
    layer = Int8DynamicLinear.from_linear(linear())
    scales = layer.weight_scale.clone()
    layer.to(torch.bfloat16)
    assert layer.weight_scale.dtype == torch.float32 and torch.equal(layer.weight_scale, scales)
    out = layer(torch.randn(2, 576).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


# ---------------------------------------------------------------------------- the method


def test_w8a8_is_registered():
    assert get_registry().method("w8a8") is W8A8
    assert W8A8.family == "quantize" and not W8A8.needs_calibration
    assert W8A8.accepts == frozenset({"dense", "pruned"})


def test_w8a8_model_predicts_like_the_original_and_counts_its_bits(tiny_llama, make_context, calibration_batch):
    total_dense, _, bits_dense = count_parameters(tiny_llama)
    with torch.no_grad():
        before = tiny_llama(calibration_batch).logits
        info = W8A8().apply(tiny_llama, W8A8.Params(), make_context())
        after = tiny_llama(calibration_batch).logits
    assert info["layers"] == 14 and 8 < info["bits_per_weight"] < 8.6
    assert sum(info["kernels"].values()) == 14
    assert all(isinstance(m, Int8DynamicLinear) for m in select_targets(tiny_llama).values())
    assert torch.allclose(before, after, atol=0.05) and not torch.equal(before, after)
    total, _, bits = count_parameters(tiny_llama)
    assert total == total_dense and bits < 0.75 * bits_dense


def test_prune_then_w8a8_then_prune_again_keeps_zeros(tiny_llama, make_context):
    ctx = make_context()
    Magnitude().apply(tiny_llama, Magnitude.Params(sparsity=0.5), ctx)
    masks = {name: get_mask(m).clone() for name, m in select_targets(tiny_llama).items()}
    W8A8().apply(tiny_llama, W8A8.Params(), ctx)
    for name, layer in select_targets(tiny_llama).items():
        assert torch.all(layer.dequantize()[~masks[name]] == 0.0)
        assert torch.equal(get_mask(layer), masks[name])
    Magnitude().apply(tiny_llama, Magnitude.Params(sparsity=0.7), ctx)  # quantize-then-prune
    for name, layer in select_targets(tiny_llama).items():
        assert torch.all(layer.dequantize()[~masks[name]] == 0.0)
        assert layer.paqbench_nonzero() == pytest.approx(0.3 * layer.paqbench_numel(), abs=2)


def test_save_then_load_quantized_gives_identical_outputs(tiny_llama, make_context, tmp_path):
    """w8a8, then structured input pruning (slicing the int8 codes), save, load into a fresh model."""
    ctx = make_context()
    W8A8().apply(tiny_llama, W8A8.Params(), ctx)
    L1Structured().apply(tiny_llama, L1Structured.Params(ratio=0.25, dim="input", targets="down_proj"), ctx)
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        expected = tiny_llama(x).logits
    tiny_llama.save_pretrained(tmp_path, safe_serialization=True)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.layers.0.mlp.up_proj.weight_int8").dtype == torch.int8
    fresh = load_quantized(tiny_random_llama(seed=7), tmp_path)
    inner = fresh.model.layers[0].mlp.down_proj.layer
    assert isinstance(inner, Int8DynamicLinear) and inner.in_features == 132
    assert isinstance(fresh.model.layers[1].self_attn.q_proj, Int8DynamicLinear)
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, expected)


def test_w8a8_refuses_quantized_layers_and_others_refuse_it(tiny_llama, make_context):
    ctx = make_context()
    W8A8().apply(tiny_llama, W8A8.Params(targets="mlp"), ctx)
    with pytest.raises(UnsupportedLayerError, match=r"mlp.*quantized \(Int8DynamicLinear\)"):
        W8A8().apply(tiny_llama, W8A8.Params(), ctx)
    with pytest.raises(UnsupportedLayerError, match="rtn"):
        RTN().apply(tiny_llama, RTN.Params(), ctx)


def test_a_pruned_linear_carries_its_mask():
    source = linear()
    keep = source.weight.detach().abs() > 0.04
    set_mask(source, keep)
    layer = Int8DynamicLinear.from_linear(source)
    assert torch.equal(get_mask(layer), keep)
    assert torch.all(layer.weight_int8[~keep] == 0)
