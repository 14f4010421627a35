"""FP8 (E4M3): one byte per weight, the float8 round trip exactly, the emulated forward
against a hand computation, save/load, pruned zeros, and the error bound."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paqbench.export import capability_of
from paqbench.layers import get_mask, layer_kind, select_targets
from paqbench.models.embedded import tiny_random_llama
from paqbench.quant.fp8 import FP8Linear
from paqbench.quant.linear import load_quantized
from paqbench.registry import get_registry
from paqbench_plugins.methods.prune.l1_structured import L1Structured
from paqbench_plugins.methods.prune.magnitude import Magnitude
from paqbench_plugins.methods.quant.fp8 import FP8
from paqbench_plugins.methods.quant.rtn import RTN

pytestmark = pytest.mark.usefixtures("one_thread")


def linear(in_features: int = 320, out_features: int = 96, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        layer.weight.normal_(0, 0.05)
        layer.weight[:, 7] *= 20
    return layer


def hand_weight(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """The spec written out: scale = max|W| / 448 (row or tensor), fp8(W / scale) * scale."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1, keepdim=True) if per_channel else w.abs().max()
    scale = amax / 448.0
    return (w / scale).to(torch.float8_e4m3fn).float() * scale


def hand_forward(layer: FP8Linear, source: nn.Linear, x: torch.Tensor, mode: str) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1]).float()
    if mode != "none":
        amax = rows.abs().amax(dim=1, keepdim=True) if mode == "per-token" else rows.abs().max()
        s = amax / 448.0
        rows = (rows / s).to(torch.float8_e4m3fn).float() * s
    return rows @ hand_weight(source.weight, layer.per_channel).T + source.bias.detach()


def test_one_byte_per_weight():
    layer = FP8Linear.from_linear(linear(1024, 256, bias=False))
    assert layer.weight_fp8.dtype == torch.float8_e4m3fn and layer.weight_fp8.element_size() == 1
    assert layer.paqbench_storage_bits() == 1024 * 256 * 8 + 256 * 32 + 3 * 32
    assert layer.paqbench_numel() == 1024 * 256 and layer_kind(layer) == "quantized"
    per_tensor = FP8Linear.from_linear(linear(1024, 256, bias=False), per_channel=False)
    assert per_tensor.weight_scale.shape == (1,) and per_tensor.paqbench_storage_bits() == 1024 * 256 * 8 + 4 * 32


@pytest.mark.parametrize("per_channel", [True, False])
def test_dequantized_weight_is_the_float8_round_trip_exactly(per_channel):
    source = linear()
    layer = FP8Linear.from_linear(source, per_channel=per_channel)
    assert torch.equal(layer.dequantize(), hand_weight(source.weight, per_channel))


@pytest.mark.parametrize("mode", ["per-token", "per-tensor", "none"])
def test_forward_equals_the_hand_computation(mode):
    source = linear()
    layer = FP8Linear.from_linear(source, activations=mode)
    x = torch.randn(2, 5, 320, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = layer(x)
    assert out.shape == (2, 5, 96) and layer.kernel == "reference"
    torch.testing.assert_close(out.reshape(10, 96), hand_forward(layer, source, x, mode), rtol=1e-6, atol=1e-6)


def test_activations_change_the_output_and_weight_only_does_not_round_them():
    source = linear()
    x = torch.randn(4, 320, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        weight_only = FP8Linear.from_linear(source, activations="none")(x)
        dynamic = FP8Linear.from_linear(source, activations="per-token")(x)
        exact = x @ weight_only_weight(source).T + source.bias
    torch.testing.assert_close(weight_only, exact, rtol=1e-6, atol=1e-6)
    assert not torch.equal(weight_only, dynamic)


def weight_only_weight(source: nn.Linear) -> torch.Tensor:
    return hand_weight(source.weight, True)


def test_relative_error_per_weight_is_within_e4m3s_half_ulp():
    source = linear(bias=False)
    w = source.weight.detach()
    layer = FP8Linear.from_linear(source)
    scale = w.abs().amax(dim=1, keepdim=True) / 448
    normal = (w / scale).abs() >= 2.0**-6  # E4M3's smallest normal; below it the step is absolute
    rel = ((layer.dequantize() - w).abs() / w.abs())[normal]
    assert float(rel.max()) <= 2.0**-4 + 1e-6
    assert float(rel.max()) > 2.0**-6  # really rounded, not stored in float


def test_pruned_zeros_stay_zero_and_editing_keeps_them():
    source = linear()
    keep = source.weight.detach().abs() > 0.04
    with torch.no_grad():
        source.weight.mul_(keep)
    layer = FP8Linear.from_linear(source)
    assert torch.all(layer.dequantize()[~keep] == 0.0)
    assert layer.paqbench_nonzero() == int(keep.sum()) + 96
    more = keep & (torch.rand(keep.shape, generator=torch.Generator().manual_seed(4)) > 0.5)
    layer.zero_weights(more)
    assert torch.all(layer.dequantize()[~more] == 0.0) and torch.equal(get_mask(layer), more)
    layer.select_output_features(torch.arange(0, 96, 2))
    layer.select_input_features(torch.arange(0, 320, 4))
    assert layer.dequantize().shape == (48, 80) and layer.weight_scale.shape == (48,)
    assert torch.all(layer.dequantize()[~more[::2, ::4]] == 0.0)


def test_casting_the_model_keeps_fp8_weights_and_float32_scales():
    layer = FP8Linear.from_linear(linear())
    weight = layer.dequantize()
    layer.to(torch.bfloat16)
    assert layer.weight_fp8.dtype == torch.float8_e4m3fn and layer.weight_scale.dtype == torch.float32
    assert torch.equal(layer.dequantize(), weight)
    out = layer(torch.randn(2, 320).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_export_capability_exact_float_quantized_and_gguf_converted():
    """compressed-tensors holds E4M3 as it is (tests/test_export_fp8.py round-trips it);
    GGUF has no FP8 type, so the weight goes out dequantized, with the reason."""
    layer = FP8Linear.from_linear(linear())
    cell = capability_of(layer, "compressed-tensors")
    assert cell.level == "exact" and "float-quantized" in cell.how
    cell = capability_of(layer, "gguf")
    assert cell.level == "converted" and cell.how == "F16" and "no FP8 tensor type" in cell.reason


# ---------------------------------------------------------------------------- the method


def test_fp8_is_registered():
    assert get_registry().method("fp8") is FP8
    assert FP8.family == "quantize" and not FP8.needs_calibration
    assert FP8.accepts == RTN.accepts
    assert all(field.description for field in FP8.Params.model_fields.values())


@pytest.mark.parametrize("mode", ["per-token", "none"])
def test_fp8_model_predicts_like_the_original(tiny_llama, make_context, calibration_batch, mode):
    with torch.no_grad():
        before = tiny_llama(calibration_batch).logits
        info = FP8().apply(tiny_llama, FP8.Params(activations=mode), make_context())
        after = tiny_llama(calibration_batch).logits
    assert info["layers"] == 14 and 8 < info["bits_per_weight"] < 8.6
    assert all(isinstance(m, FP8Linear) for m in select_targets(tiny_llama).values())
    assert torch.allclose(before, after, atol=0.05) and not torch.equal(before, after)


def test_prune_then_fp8_keeps_zeros(tiny_llama, make_context):
    ctx = make_context()
    Magnitude().apply(tiny_llama, Magnitude.Params(sparsity=0.5), ctx)
    masks = {name: get_mask(m).clone() for name, m in select_targets(tiny_llama).items()}
    FP8().apply(tiny_llama, FP8.Params(), ctx)
    for name, layer in select_targets(tiny_llama).items():
        assert torch.all(layer.dequantize()[~masks[name]] == 0.0)
        assert torch.equal(get_mask(layer), masks[name])


@pytest.mark.parametrize("weight_scale", ["per-channel", "per-tensor"])
def test_save_then_load_is_exact(tiny_llama, make_context, tmp_path, weight_scale):
    ctx = make_context()
    FP8().apply(tiny_llama, FP8.Params(weight_scale=weight_scale, activations="per-tensor"), ctx)
    L1Structured().apply(tiny_llama, L1Structured.Params(ratio=0.25, dim="input", targets="down_proj"), ctx)
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        expected = tiny_llama(x).logits
    tiny_llama.save_pretrained(tmp_path, safe_serialization=True)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.layers.0.mlp.up_proj.weight_fp8").dtype == torch.float8_e4m3fn
    fresh = load_quantized(tiny_random_llama(seed=7), tmp_path)
    q_proj = fresh.model.layers[1].self_attn.q_proj
    assert isinstance(q_proj, FP8Linear) and q_proj.activations == "per-tensor"
    assert q_proj.per_channel == (weight_scale == "per-channel")
    assert fresh.model.layers[0].mlp.down_proj.layer.in_features == 132
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, expected)
