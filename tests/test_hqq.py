"""HQQ: never worse than RTN per group, strictly better overall, on paqbench's integer grid."""

from __future__ import annotations

import pytest
import torch

from paqbench.layers import get_mask, layer_kind, select_targets
from paqbench.quant.hqq import group_errors, quantize_hqq, shrink_lp
from paqbench.quant.linear import QuantizedLinear
from paqbench.quant.quantizer import QuantConfig, quantize_rtn
from paqbench.registry import get_registry
from paqbench_plugins.methods.prune.magnitude import Magnitude
from paqbench_plugins.methods.quant.hqq import HQQ
from paqbench_plugins.methods.quant.rtn import RTN

pytestmark = pytest.mark.usefixtures("one_thread")


def outlier_weight(rows: int = 48, cols: int = 300, seed: int = 0) -> torch.Tensor:
    """Gaussian weights with 1% outliers ten times larger (300 columns: g128 leaves a group of 44)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator) * 0.02
    outliers = torch.rand(rows, cols, generator=generator) < 0.01
    return torch.where(outliers, weight * 10, weight)


def per_group(weight: torch.Tensor, w_hat: torch.Tensor, g_idx: torch.Tensor, groups: int) -> torch.Tensor:
    """[2, out, groups]: squared and |W|-weighted squared error of each group."""
    sq, wt = group_errors(weight.unsqueeze(-1), w_hat.unsqueeze(-1))
    index = g_idx.long().expand_as(weight)
    zeros = torch.zeros(weight.shape[0], groups)
    return torch.stack([zeros.scatter_add(1, index, sq.squeeze(-1)), zeros.scatter_add(1, index, wt.squeeze(-1))])


def test_shrink_lp_is_the_soft_threshold_at_p1_and_keeps_large_values_at_p07():
    x = torch.tensor([-2.0, -0.05, 0.0, 0.05, 2.0])
    assert torch.allclose(shrink_lp(x, 10.0, 1.0), torch.tensor([-1.9, 0.0, 0.0, 0.0, 1.9]))
    shrunk = shrink_lp(x, 10.0, 0.7)
    assert shrunk[1] == 0 and shrunk[3] == 0  # small errors are thresholded away
    assert float(2.0 - shrunk[4]) < 0.1  # large ones shrink by less than 1/beta


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [128, 32, -1])
def test_hqq_is_never_worse_than_rtn_on_any_group(bits, group_size):
    weight = outlier_weight()
    config = QuantConfig(bits, group_size, False)
    result = quantize_hqq(weight, config)
    rtn = quantize_rtn(weight, config)
    groups = config.n_groups(weight.shape[1])
    hqq_err = per_group(weight, result.quantized.dequantize(), result.quantized.g_idx, groups)
    rtn_err = per_group(weight, rtn.dequantize(), rtn.g_idx, groups)
    assert torch.all(hqq_err <= rtn_err * (1 + 1e-6))
    assert result.hqq_groups > 0  # the optimizer changed some grids ...
    assert float(hqq_err[0].sum()) < float(rtn_err[0].sum())  # ... and lowered the total error


def test_hqq_lowers_2bit_error_by_a_lot():
    weight = outlier_weight(seed=1)
    config = QuantConfig(2, 64, False)
    hqq = quantize_hqq(weight, config).quantized.dequantize()
    rtn = quantize_rtn(weight, config).dequantize()
    assert float((weight - hqq).norm()) < 0.95 * float((weight - rtn).norm())


def test_hqq_codes_fit_the_bit_range_and_the_grid_contains_zero():
    weight = outlier_weight()
    for bits in (2, 3, 5, 8):
        q = quantize_hqq(weight, QuantConfig(bits, 128, False)).quantized
        assert q.codes.dtype == torch.uint8 and int(q.codes.max()) < 2**bits
        assert int(q.zeros.max()) < 2**bits
        assert q.scales.dtype == torch.float16 and bool((q.scales > 0).all())
        assert q.scales.shape == (48, 3) and q.g_idx.tolist() == [i // 128 for i in range(300)]


def test_hqq_is_deterministic():
    weight = outlier_weight()
    a = quantize_hqq(weight, QuantConfig(3, 128, False)).quantized
    b = quantize_hqq(weight.clone(), QuantConfig(3, 128, False)).quantized
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales) and torch.equal(a.zeros, b.zeros)


def test_hqq_keeps_masked_weights_exactly_zero():
    weight = outlier_weight()
    keep = torch.rand(weight.shape, generator=torch.Generator().manual_seed(3)) > 0.5
    q = quantize_hqq(weight, QuantConfig(4, 64, False), keep).quantized
    assert torch.all(q.dequantize()[~keep] == 0.0)


def test_hqq_rejects_a_symmetric_grid():
    with pytest.raises(ValueError, match="asymmetric"):
        quantize_hqq(outlier_weight(), QuantConfig(4, 128, True))


def test_hqq_is_registered_with_rtns_layer_kinds():
    assert get_registry().method("hqq") is HQQ
    assert HQQ.family == "quantize" and not HQQ.needs_calibration
    assert HQQ.accepts == RTN.accepts
    fields = HQQ.Params.model_fields
    assert all(fields[name].description for name in fields)


def test_hqq_method_packs_quantized_linears(tiny_llama, make_context):
    original = {name: m.weight.detach().clone() for name, m in select_targets(tiny_llama).items()}
    info = HQQ().apply(tiny_llama, HQQ.Params(bits=4, group_size=128), make_context())
    targets = select_targets(tiny_llama)
    assert info["layers"] == len(original) == 14 and 0 < info["hqq_group_fraction"] <= 1
    for name, layer in targets.items():
        assert isinstance(layer, QuantizedLinear) and layer_kind(layer) == "quantized"
        expected = quantize_hqq(original[name], QuantConfig(4, 128, False)).quantized
        assert torch.equal(layer.dequantize(), expected.dequantize())
    assert tiny_llama.model.layers[0].mlp.down_proj.n_groups == 2  # 176 inputs: 128 + a short 48


def test_prune_then_hqq_keeps_the_masked_weights_zero(tiny_llama, make_context):
    ctx = make_context()
    Magnitude().apply(tiny_llama, Magnitude.Params(sparsity=0.5), ctx)
    masks = {name: get_mask(module).clone() for name, module in select_targets(tiny_llama).items()}
    HQQ().apply(tiny_llama, HQQ.Params(bits=3, group_size=32), ctx)
    for name, layer in select_targets(tiny_llama).items():
        assert torch.all(layer.dequantize()[~masks[name]] == 0.0), name
        assert torch.equal(get_mask(layer), masks[name])
